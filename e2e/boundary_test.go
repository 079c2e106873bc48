package e2e

// The runtime boundary against the real Copilot CLI: what the runtime
// process inherits, what a tool it runs can print back to the model, what
// happens when it asks for a tool's permission, and how its death ends a
// turn.

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/clitest"
	"github.com/tokenbroker/tokenbroker/internal/syncbuf"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
)

// boundarySecrets are variables a service may hold that the runtime must
// never see: cloud credentials, managed identity endpoints and headers,
// CI and GitHub tokens.
var boundarySecrets = []string{
	"AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID", "AZURE_TENANT_ID",
	"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT",
	"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS",
	"GITHUB_TOKEN", "GH_TOKEN", "COPILOT_GITHUB_TOKEN", "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "ACTIONS_RUNTIME_TOKEN", "CI_JOB_TOKEN",
}

// setBoundarySecrets sets each of boundarySecrets to a unique marker and
// returns the markers. The markers look like ordinary words, so that no
// secret masking of the CLI's own can hide one that got through.
func setBoundarySecrets(t *testing.T) []string {
	run := hardUnique("")[:8]
	var markers []string
	for i, name := range boundarySecrets {
		m := fmt.Sprintf("tbmarker%s%02d", run, i)
		t.Setenv(name, m)
		markers = append(markers, m)
	}
	return markers
}

// reversed is s backwards: the tool prints the environment both ways.
func reversed(s string) string {
	r := []rune(s)
	for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
		r[i], r[j] = r[j], r[i]
	}
	return string(r)
}

// leakedMarkers lists the markers found in text, forwards or backwards.
func leakedMarkers(text string, markers []string) []string {
	var found []string
	for i, m := range markers {
		if strings.Contains(text, m) || strings.Contains(text, reversed(m)) {
			found = append(found, boundarySecrets[i])
		}
	}
	return found
}

// envTool is the tool call the model makes: print the environment of the
// runtime's shell and of the runtime itself.
const envTool = `{"command":"env; env | rev; tr '\\0' '\\n' < /proc/$PPID/environ","description":"print the environment"}`

// envModel answers the first request of a turn with the env tool call and
// the next (which carries its result) with "done".
func envModel(t *testing.T) *fakemodel.Server {
	m, err := fakemodel.Start(fakemodel.Options{Respond: func(r fakemodel.Request) fakemodel.Response {
		if len(r.ToolResults) == 0 {
			return fakemodel.Response{ToolCalls: []fakemodel.ToolCall{{Name: "bash", Arguments: envTool}}}
		}
		return fakemodel.Response{Text: "done"}
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// toolOutput is the tool result the model received last.
func toolOutput(t *testing.T, m *fakemodel.Server) string {
	t.Helper()
	reqs := m.Requests()
	for i := len(reqs) - 1; i >= 0; i-- {
		if res := reqs[i].ToolResults; len(res) > 0 {
			return res[len(res)-1].Content
		}
	}
	t.Fatal("the model never received a tool result")
	return ""
}

// procEnviron reads a live process's environment.
func procEnviron(t *testing.T, pid int) string {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(string(raw), "\x00", "\n")
}

// TestBoundaryRealCLI runs the real CLI in a service environment full of
// credentials (t.Setenv: not parallel). With the tool permitted, the shell
// the model commands prints its environment back to the model: no
// credential is in it, nor in the runtime's own /proc environ. With the
// default handler, the tool is denied with its reason and the turn ends
// (over the responses wire API, streamed, where the first case used chat
// completions).
func TestBoundaryRealCLI(t *testing.T) {
	cli := clitest.Path(t)
	hardLeakCheck(t)
	markers := setBoundarySecrets(t)

	t.Run("permitted", func(t *testing.T) {
		ctx := testContext(t)
		var mu sync.Mutex
		var asked []client.PermissionRequest
		allow := func(_ context.Context, req client.PermissionRequest) client.PermissionDecision {
			mu.Lock()
			defer mu.Unlock()
			asked = append(asked, req)
			return client.PermissionDecision{Allow: true}
		}
		traffic := &trafficLog{}
		c := startCLI(t, cli, newBroker(t, actors.Options{}), client.Options{Permission: allow, Handler: traffic})
		if leaked := leakedMarkers(procEnviron(t, c.Pid()), markers); len(leaked) > 0 {
			t.Errorf("the runtime process inherited %v", leaked)
		}
		model := envModel(t)
		p := provider(model, newCredential("boundary"), testScope)
		sess, err := c.CreateSession(ctx, sessions.SessionConfig{Model: "gpt-4o", Provider: &p})
		if err != nil {
			t.Fatal(err)
		}
		logged := logPermissionEvents(t, sess)
		if ans, err := sess.SendAndWait(ctx, "print the environment"); err != nil || ans != "done" {
			t.Fatalf("turn: %q, %v", ans, err)
		}
		if err := sess.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
		<-logged
		t.Logf("other runtime-to-client messages: %s", traffic)
		out := toolOutput(t, model)
		if !strings.Contains(out, "PATH=") || !strings.Contains(out, reversed("PATH=")) {
			t.Fatalf("the tool did not print the environment: %.300q", out)
		}
		if leaked := leakedMarkers(out, markers); len(leaked) > 0 {
			t.Errorf("the model received %v from the tool", leaked)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(asked) != 1 || asked[0].Tool != "bash" || asked[0].Kind != "shell" || asked[0].SessionID != sess.ID() ||
			!strings.Contains(string(asked[0].Arguments), "/proc/$PPID/environ") {
			t.Errorf("permission requests %+v", asked)
		}
	})

	t.Run("denied by default", func(t *testing.T) {
		ctx := testContext(t)
		c := startCLI(t, cli, newBroker(t, actors.Options{}), client.Options{})
		model := envModel(t)
		// The other wire API, streamed: its tool calls and results too.
		p := provider(model, newCredential("boundary"), testScope)
		p.WireAPI = "responses"
		sess, err := c.CreateSession(ctx, sessions.SessionConfig{Model: "gpt-4o", Provider: &p, Extra: map[string]any{"streaming": true}})
		if err != nil {
			t.Fatal(err)
		}
		if ans, err := sess.SendAndWait(ctx, "print the environment"); err != nil || ans != "done" {
			t.Fatalf("turn: %q, %v", ans, err)
		}
		out := toolOutput(t, model)
		if !strings.Contains(out, client.DenyReason) || strings.Contains(out, "PATH=") {
			t.Fatalf("tool result %.300q, want the denial with its reason", out)
		}
		t.Logf("the model was told: %s", out)
		if r := model.Requests()[0]; !strings.HasSuffix(r.Path, "/responses") || !r.Stream {
			t.Errorf("model request %s stream=%t, want streamed responses", r.Path, r.Stream)
		}
	})
}

// kill -9 of the real CLI mid-turn (the model is still answering), with a
// descendant holding its stdout: SendAndWait fails at once, and Close
// leaves no process behind.
func TestBoundaryRealCLIKilledMidTurn(t *testing.T) {
	cli := clitest.Path(t)
	hardLeakCheck(t)
	ctx := testContext(t)
	var asked sync.Once
	reached := make(chan struct{})
	model, err := fakemodel.Start(fakemodel.Options{Respond: func(fakemodel.Request) fakemodel.Response {
		asked.Do(func() { close(reached) })
		return fakemodel.Response{Text: "too late", Delay: time.Minute}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer model.Close()
	stderr := &syncbuf.Buffer{}
	// sh leaves a sleep holding stdout and stderr, then becomes the CLI.
	script := `sleep 300 & echo "descendant pid $!" >&2; exec "$0" "$@"`
	c := startCLI(t, "/bin/sh", newBroker(t, actors.Options{}), client.Options{
		Args:   append([]string{"-c", script, cli}, client.DefaultCLIArgs()...),
		Stderr: stderr,
	})
	p := provider(model, newCredential("killed"), testScope)
	sess, err := c.CreateSession(ctx, sessions.SessionConfig{Model: "gpt-4o", Provider: &p})
	if err != nil {
		t.Fatal(err)
	}
	result := make(chan error, 1)
	go func() {
		_, err := sess.SendAndWait(ctx, "hello")
		result <- err
	}()
	select {
	case <-reached:
	case <-ctx.Done():
		t.Fatal("the model was never asked")
	}
	if err := syscall.Kill(c.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	select {
	case err := <-result:
		took := time.Since(killed)
		t.Logf("SendAndWait returned %v after kill -9: %v", took.Round(time.Millisecond), err)
		if err == nil || !strings.Contains(err.Error(), "signal: killed") {
			t.Errorf("err = %v, want the runtime's death", err)
		}
		if took > time.Second {
			t.Errorf("SendAndWait took %v after the kill, want under 1s", took)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("SendAndWait still waiting 30s after kill -9 of the runtime")
	}
	if err := c.Close(); err != nil {
		t.Error(err)
	}
	_, rest, ok := strings.Cut(stderr.String(), "descendant pid ")
	if !ok {
		t.Fatal("no descendant pid on stderr")
	}
	pid, _ := strconv.Atoi(strings.Fields(rest)[0])
	hardEventually(t, "the descendant killed", func() bool {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		return err != nil || strings.Contains(string(stat), ") Z ")
	})
}

// logPermissionEvents logs the events of a tool's permission as the CLI
// sent them, until the session closes (then the channel closes).
func logPermissionEvents(t *testing.T, sess *client.Session) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range sess.Events() {
			switch ev.Type {
			case client.EventToolStart, client.EventPermissionRequested, "permission.completed", "tool.execution_complete":
				t.Logf("event %s %.600s", ev.Type, ev.Data)
			}
		}
	}()
	return done
}

// trafficLog counts what the runtime sends that the client does not handle
// itself, by kind and method, and answers requests with an error.
type trafficLog struct {
	mu   sync.Mutex
	seen map[string]int
}

func (l *trafficLog) Handle(ctx context.Context, conn *jsonrpc2.Conn, req *jsonrpc2.Request) {
	kind := "request"
	if req.Notif {
		kind = "notification"
	}
	l.mu.Lock()
	if l.seen == nil {
		l.seen = map[string]int{}
	}
	l.seen[kind+" "+req.Method]++
	l.mu.Unlock()
	if !req.Notif {
		_ = conn.ReplyWithError(ctx, req.ID, &jsonrpc2.Error{Code: jsonrpc2.CodeMethodNotFound, Message: "method not found: " + req.Method})
	}
}

func (l *trafficLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprint(l.seen)
}
