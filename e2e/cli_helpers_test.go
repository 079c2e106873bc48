package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/sessions"
	"github.com/tokenbroker/tokenbroker/sessions/client"
	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// protoactorThrottle: the actor system's dead-letter throttle waits out one
// period (about a second) in a goroutine after the system shuts down; it
// holds nothing of ours. Its name depends on inlining.
var protoactorThrottle = []goleak.Option{
	goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewThrottle.func1"),
	goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"),
}

// cliTimeout bounds one real-CLI test; generous, for "it answers at all".
const cliTimeout = 2 * time.Minute

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	t.Cleanup(cancel)
	return ctx
}

// newBroker starts a broker closed when the test ends (after the clients,
// which are registered later and so cleaned up first).
func newBroker(t *testing.T, opts actors.Options) *actors.Broker {
	b := actors.NewBroker(opts)
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("broker close: %v", err)
		}
	})
	return b
}

// startCLI starts the real CLI at path for broker and logs how long the
// start and handshake took and the process's memory.
func startCLI(t *testing.T, path string, b *actors.Broker, opts client.Options) *client.Client {
	t.Helper()
	opts.CLIPath = path
	if opts.Dir == "" {
		opts.Dir = t.TempDir() // keep the runtime away from this repository's files
	}
	if os.Getenv("TOKENBROKER_CLI_STDERR") == "1" {
		opts.Stderr = os.Stderr
	}
	start := time.Now()
	c, err := client.Start(testContext(t), b, opts)
	if err != nil {
		t.Fatalf("starting the Copilot CLI: %v", err)
	}
	took := time.Since(start)
	rss, _ := procMemory(c.Pid())
	t.Logf("copilot %s (protocol %d) pid %d: start+connect %s, RSS %s",
		c.Info().Version, c.Info().ProtocolVersion, c.Pid(), took.Round(time.Millisecond), mib(rss.rss))
	t.Cleanup(func() {
		if m, err := procMemory(c.Pid()); err == nil {
			t.Logf("copilot pid %d before close: RSS %s, peak RSS %s", c.Pid(), mib(m.rss), mib(m.peak))
		}
		stop := time.Now()
		if err := c.Close(); err != nil {
			t.Errorf("client close: %v", err)
		}
		t.Logf("copilot pid %d stopped in %s", c.Pid(), time.Since(stop).Round(time.Millisecond))
	})
	return c
}

type memory struct{ rss, peak int64 } // bytes

// procMemory reads VmRSS and VmHWM of a process from /proc.
func procMemory(pid int) (memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	defer f.Close()
	var m memory
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(value) // "123456 kB"
		if len(fields) == 0 {
			continue
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			continue
		}
		switch name {
		case "VmRSS":
			m.rss = kb << 10
		case "VmHWM":
			m.peak = kb << 10
		}
	}
	return m, sc.Err()
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// newModel starts a fake model endpoint answering reply.
func newModel(t *testing.T, reply string) *fakemodel.Server {
	m, err := fakemodel.Start(fakemodel.Options{Reply: func(fakemodel.Request) string { return reply }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// provider is an OpenAI-compatible provider at m whose tokens come from src.
func provider(m *fakemodel.Server, src tokens.Source, scope string) sessions.ProviderConfig {
	return sessions.ProviderConfig{Type: "openai", WireAPI: "completions", BaseURL: m.URL(), BearerTokenSource: src, BearerTokenScope: scope}
}

// credential is a test token source that counts its calls and records the
// requests, handing out "<prefix>-<n>" valid for life (an hour unless set;
// negative: already expired) on clock, or bare tokens.
type credential struct {
	prefix string
	clock  tokens.Clock
	life   time.Duration
	bare   bool

	mu    sync.Mutex
	reqs  []tokens.Request
	fail  error
	block bool
}

func newCredential(prefix string) *credential {
	return &credential{prefix: prefix, clock: tokens.SystemClock(), life: time.Hour}
}

func (c *credential) Token(ctx context.Context, req tokens.Request) (tokens.Token, error) {
	c.mu.Lock()
	c.reqs = append(c.reqs, req)
	n, fail, block := len(c.reqs), c.fail, c.block
	c.mu.Unlock()
	if block {
		<-ctx.Done() // hangs until the broker gives up on it
		return tokens.Token{}, ctx.Err()
	}
	if fail != nil {
		return tokens.Token{}, fail
	}
	tok := tokens.Token{Value: c.value(n)}
	if !c.bare {
		tok.ExpiresOn = c.clock.Now().Add(c.life)
	}
	return tok, nil
}

func (c *credential) value(n int) string { return fmt.Sprintf("%s-%d", c.prefix, n) }

func (c *credential) calls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.reqs)
}

// has reports whether v is the token of one of c's calls so far.
func (c *credential) has(v string) bool {
	for n := range c.calls() {
		if v == c.value(n+1) {
			return true
		}
	}
	return false
}

func (c *credential) requests() []tokens.Request {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]tokens.Request(nil), c.reqs...)
}

func (c *credential) setFail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fail = err
}

// onlyToken lists, as fingerprints, the bearer tokens m received, and
// reports whether every one equals want.
func onlyToken(m *fakemodel.Server, want string) (fingerprints []string, ok bool) {
	ok = true
	for _, r := range m.Requests() {
		fingerprints = append(fingerprints, tokens.Fingerprint(r.BearerToken()))
		if r.BearerToken() != want {
			ok = false
		}
	}
	return fingerprints, ok
}

// fakeClock is a tokens.Clock that moves only when told; its timers never
// fire, so a test drives refreshes by requests alone.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(time.Duration, func()) func() bool { return func() bool { return true } }

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
