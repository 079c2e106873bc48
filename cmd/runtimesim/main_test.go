package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sourcegraph/jsonrpc2"
	"go.uber.org/goleak"

	"github.com/tokenbroker/tokenbroker/sessions/runtimesim"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitFor bounds the waits for run: generous, since only a failing test
// waits this long.
const waitFor = 10 * time.Second

// waitRun waits for run's result on done after what, and fails the test if
// run failed or did not return.
func waitRun(t *testing.T, done <-chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(waitFor):
		t.Fatalf("run did not return after %s", what)
	}
}

// connectCall makes a connect call over rwc and checks the version.
func connectCall(t *testing.T, rwc io.ReadWriteCloser, wantVersion string) {
	t.Helper()
	jc := jsonrpc2.NewConn(context.Background(), jsonrpc2.NewBufferedStream(rwc, jsonrpc2.VSCodeObjectCodec{}),
		jsonrpc2.HandlerWithError(func(context.Context, *jsonrpc2.Conn, *jsonrpc2.Request) (any, error) { return nil, nil }))
	defer jc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	var res struct{ Version string }
	if err := jc.Call(ctx, "connect", map[string]any{}, &res); err != nil {
		t.Fatal(err)
	}
	if res.Version != wantVersion {
		t.Fatalf("version %q, want %q", res.Version, wantVersion)
	}
}

type pipes struct {
	io.Reader
	io.WriteCloser
}

func TestStdioExitsWhenStdinCloses(t *testing.T) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- run(context.Background(), []string{"-dialect", "getToken"}, inR, outW, io.Discard) }()
	connectCall(t, pipes{outR, inW}, "sim-getToken") // closes stdin at the end
	waitRun(t, done, "stdin closed")
}

func TestListen(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-listen", "127.0.0.1:0"}, strings.NewReader(""), outW, io.Discard) }()
	line, err := bufio.NewReader(outR).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, outR)
	addr := strings.TrimSpace(strings.TrimPrefix(line, "listening on "))
	for range 2 { // serves several connections
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		connectCall(t, c, "sim-"+runtimesim.DefaultDialect.String()) // the shared default
	}
	cancel()
	waitRun(t, done, "cancel")
	outW.Close()
}

func TestFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-dialect", "nope"},
		{"-listen", "0.0.0.0:0"},
		{"-listen", "192.0.2.1:0"},
	} {
		if err := run(context.Background(), args, strings.NewReader(""), io.Discard, io.Discard); err == nil {
			t.Errorf("run %v: no error", args)
		}
	}
}
