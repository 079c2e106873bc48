package transport

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sourcegraph/jsonrpc2"
	"go.uber.org/goleak"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// settle bounds waits for things that must happen "at all": generous, so
// that a slow, shared machine never fails a correct build.
const settle = 10 * time.Second

// protoactor's dead-letter throttle sleeps about a second after a dead
// letter; it is not ours and ends by itself. Its name depends on inlining.
var ignoreThrottle = []goleak.Option{
	goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewThrottle.func1"),
	goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"),
}

func verifyNoLeaks(t *testing.T) {
	t.Helper()
	opts := append([]goleak.Option{goleak.IgnoreCurrent()}, ignoreThrottle...)
	t.Cleanup(func() { goleak.VerifyNone(t, opts...) })
}

func newTestBroker(t *testing.T, opts actors.Options) *actors.Broker {
	t.Helper()
	b := actors.NewBroker(opts)
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("broker Close: %v", err)
		}
	})
	return b
}

// rtConn is the runtime's side of a test connection: a jsonrpc2 client.
type rtConn struct {
	*jsonrpc2.Conn
	client *Conn
}

// dial connects a runtime client to a new Conn of b over net.Pipe.
func dial(t *testing.T, b *actors.Broker, opts ConnOptions, next jsonrpc2.Handler) *rtConn {
	t.Helper()
	clientEnd, runtimeEnd := net.Pipe()
	ctx := context.Background()
	client := NewConn(ctx, b, clientEnd, next, opts)
	rt := jsonrpc2.NewConn(ctx, jsonrpc2.NewBufferedStream(runtimeEnd, codec{}), noRequests{})
	t.Cleanup(func() {
		_ = rt.Close()
		_ = client.Close()
		<-client.Done()
		<-rt.DisconnectNotify()
	})
	return &rtConn{Conn: rt, client: client}
}

// noRequests answers any request made to the runtime side with an error.
type noRequests struct{}

func (noRequests) Handle(ctx context.Context, c *jsonrpc2.Conn, r *jsonrpc2.Request) {
	if !r.Notif {
		_ = c.ReplyWithError(ctx, r.ID, &jsonrpc2.Error{Code: jsonrpc2.CodeMethodNotFound, Message: "no"})
	}
}

// token asks for a token in the given dialect and returns the raw result.
func (rt *rtConn) token(ctx context.Context, method, session, provider string) (json.RawMessage, error) {
	params := map[string]string{"sessionId": session, "providerName": provider}
	var raw json.RawMessage
	err := rt.Call(ctx, method, params, &raw)
	return raw, err
}

func staticSource(value string) tokens.Source {
	return tokens.Static(tokens.Token{Value: value, ExpiresOn: time.Now().Add(time.Hour)})
}

// blockingSource blocks every call until release is closed or its context
// ends, and reports each call's end on ended.
type blockingSource struct {
	started chan struct{}
	release chan struct{}
	ended   chan error
	value   string
}

func newBlockingSource(value string) *blockingSource {
	return &blockingSource{started: make(chan struct{}, 16), release: make(chan struct{}), ended: make(chan error, 16), value: value}
}

func (s *blockingSource) Token(ctx context.Context, _ tokens.Request) (tokens.Token, error) {
	s.started <- struct{}{}
	select {
	case <-s.release:
		s.ended <- nil
		return tokens.Token{Value: s.value, ExpiresOn: time.Now().Add(time.Hour)}, nil
	case <-ctx.Done():
		s.ended <- ctx.Err()
		return tokens.Token{}, ctx.Err()
	}
}

func waitFor(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(settle):
		t.Fatalf("%s did not happen within %s", what, settle)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(settle)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within %s", what, settle)
		}
		time.Sleep(time.Millisecond)
	}
}

// When the runtime goes away, the connection's Router closes: its sessions
// are gone and no new one can be opened on it.
func TestConnRouterClosesWhenRuntimeDisconnects(t *testing.T) {
	verifyNoLeaks(t)
	b := newTestBroker(t, actors.Options{})
	rt := dial(t, b, ConnOptions{}, nil)
	if err := rt.client.Router().Open("s", []actors.Provider{{Name: "p", Source: staticSource("t1")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.token(context.Background(), MethodGetToken, "s", "p"); err != nil {
		t.Fatal(err)
	}
	_ = rt.Close()
	waitFor(t, "client side noticing the disconnect", rt.client.Done())
	eventually(t, "router closing", func() bool { return rt.client.Router().Len() == 0 })
	if err := rt.client.Router().Open("s2", []actors.Provider{{Name: "p", Source: staticSource("t2")}}); !errors.Is(err, actors.ErrClosed) {
		t.Fatalf("Open on a dead connection: %v", err)
	}
}

// Call reaches the runtime over the connection: an answer is decoded into
// result, an error reply comes back as a *jsonrpc2.Error, and a closed
// connection fails at once with jsonrpc2.ErrClosed.
func TestConnCall(t *testing.T) {
	verifyNoLeaks(t)
	b := newTestBroker(t, actors.Options{})
	clientEnd, runtimeEnd := net.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), settle)
	defer cancel()
	client := NewConn(ctx, b, clientEnd, nil, ConnOptions{})
	rt := jsonrpc2.NewConn(ctx, jsonrpc2.NewBufferedStream(runtimeEnd, codec{}), jsonrpc2.HandlerWithError(
		func(_ context.Context, _ *jsonrpc2.Conn, req *jsonrpc2.Request) (any, error) {
			if req.Method != "echo" {
				return nil, &jsonrpc2.Error{Code: jsonrpc2.CodeMethodNotFound, Message: "no " + req.Method}
			}
			return req.Params, nil
		}))
	defer func() { _ = rt.Close(); <-rt.DisconnectNotify() }()

	var got map[string]string
	if err := client.Call(ctx, "echo", map[string]string{"said": "hello"}, &got); err != nil || got["said"] != "hello" {
		t.Fatalf("Call(echo) = %v, %v", got, err)
	}
	var rpcErr *jsonrpc2.Error
	if err := client.Call(ctx, "session.nothing", nil, nil); !errors.As(err, &rpcErr) || rpcErr.Code != jsonrpc2.CodeMethodNotFound {
		t.Fatalf("Call of a method the runtime lacks: %v", err)
	}
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}
	if err := client.Call(ctx, "echo", nil, nil); !errors.Is(err, jsonrpc2.ErrClosed) {
		t.Fatalf("Call after Close: %v, want jsonrpc2.ErrClosed", err)
	}
}

// rawPeer drives the runtime end of a pipe by hand: it writes arbitrary
// bytes and decodes whatever frames come back.
type rawPeer struct {
	w       io.WriteCloser
	replies chan json.RawMessage
	done    chan struct{} // closed when the client side closed the pipe
}

func dialRaw(t *testing.T, b *actors.Broker, opts ConnOptions, next jsonrpc2.Handler) (*Conn, *rawPeer) {
	t.Helper()
	clientEnd, runtimeEnd := net.Pipe()
	client := NewConn(context.Background(), b, clientEnd, next, opts)
	p := &rawPeer{w: runtimeEnd, replies: make(chan json.RawMessage, 64), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		r := bufio.NewReader(runtimeEnd)
		for {
			var m json.RawMessage
			if err := (codec{}).ReadObject(r, &m); err != nil {
				return
			}
			p.replies <- m
		}
	}()
	t.Cleanup(func() {
		_ = runtimeEnd.Close()
		_ = client.Close()
		<-client.Done()
		<-p.done
	})
	return client, p
}

// write sends raw bytes; over a synchronous pipe it fails once the client
// side has closed, which is fine here.
func (p *rawPeer) write(s string) { _, _ = io.WriteString(p.w, s) }

// rawReply waits for the next frame from the client side.
func (p *rawPeer) rawReply(t *testing.T) json.RawMessage {
	t.Helper()
	select {
	case m := <-p.replies:
		return m
	case <-time.After(settle):
		t.Fatalf("no reply within %s", settle)
		return nil
	}
}

func (p *rawPeer) reply(t *testing.T) map[string]any {
	t.Helper()
	m := p.rawReply(t)
	var v map[string]any
	if err := json.Unmarshal(m, &v); err != nil {
		t.Fatalf("reply %s: %v", m, err)
	}
	return v
}

// A frame whose header is broken, or whose declared size is over the cap,
// ends the connection: the stream cannot be trusted after it. The router
// closes with it. An oversize frame is refused from its header alone.
func TestConnBadFramingClosesConnection(t *testing.T) {
	cases := map[string]string{
		"oversize":       "Content-Length: 1099511627776\r\n\r\n",
		"bad length":     "Content-Length: 12x\r\n\r\n{}",
		"no colon":       "garbage\r\n\r\n",
		"bare LF":        "Content-Length: 2\n\n{}",
		"endless header": string(make([]byte, 4096)),
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			verifyNoLeaks(t)
			b := newTestBroker(t, actors.Options{})
			client, peer := dialRaw(t, b, ConnOptions{MaxFrameSize: 1 << 10}, nil)
			if err := client.Router().Open("s", []actors.Provider{{Name: "p", Source: staticSource("t")}}); err != nil {
				t.Fatal(err)
			}
			go peer.write(in)
			waitFor(t, "connection closing", client.Done())
			waitFor(t, "pipe closing", peer.done)
			eventually(t, "router closing", func() bool { return client.Router().Len() == 0 })
		})
	}
}

// A well-framed body that is not a JSON-RPC message (garbage, a batch, a
// message that is neither request nor response, an id of the wrong type)
// is skipped, and the connection keeps answering.
func TestConnSkipsBodiesThatAreNotMessages(t *testing.T) {
	verifyNoLeaks(t)
	b := newTestBroker(t, actors.Options{})
	client, peer := dialRaw(t, b, ConnOptions{}, nil)
	if err := client.Router().Open("s", []actors.Provider{{Name: "p", Source: staticSource("tok-skip")}}); err != nil {
		t.Fatal(err)
	}
	junk := []string{
		"\x00\xff not json",
		`[{"jsonrpc":"2.0","id":1,"method":"providerToken.getToken","params":{"sessionId":"s","providerName":"p"}}]`,
		`{"jsonrpc":"2.0"}`,
		`{"jsonrpc":"2.0","id":1,"method":"x","result":1}`,
		`{"jsonrpc":"2.0","id":1.5,"method":"providerToken.getToken","params":{"sessionId":"s","providerName":"p"}}`,
		`{"jsonrpc":"2.0","id":true,"method":"providerToken.getToken","params":{"sessionId":"s","providerName":"p"}}`,
		`{"jsonrpc":"2.0","id":1e400,"method":"providerToken.getToken","params":{"sessionId":"s","providerName":"p"}}`,
		// jsonrpc2 parses a request's numeric id as an int64.
		`{"jsonrpc":"2.0","id":18446744073709551615,"method":"providerToken.getToken","params":{"sessionId":"s","providerName":"p"}}`,
		`{"jsonrpc":"2.0","id":99,"result":{}}`, // a response to nothing: ignored
	}
	for _, j := range junk {
		peer.write(frame(j))
	}
	peer.write(frame(`{"jsonrpc":"2.0","id":"after","method":"providerToken.getToken","params":{"sessionId":"s","providerName":"p"}}`))
	r := peer.reply(t)
	if r["id"] != "after" || r["result"].(map[string]any)["token"] != "tok-skip" {
		t.Fatalf("reply after junk: %v", r)
	}
	select {
	case m := <-peer.replies:
		t.Fatalf("a skipped body was answered: %s", m)
	default:
	}
}

// The ids a runtime may send come back as sent, byte for byte: numbers,
// strings, zero, the largest int64 (compared as text: through float64 the
// large ones would round alike); a null id makes a notification, never
// answered. (Numbers above the largest int64 are not ids jsonrpc2 can
// parse: see TestConnSkipsBodiesThatAreNotMessages.)
func TestConnEchoesRequestIDs(t *testing.T) {
	verifyNoLeaks(t)
	b := newTestBroker(t, actors.Options{})
	client, peer := dialRaw(t, b, ConnOptions{}, nil)
	if err := client.Router().Open("s", []actors.Provider{{Name: "p", Source: staticSource("tok-id")}}); err != nil {
		t.Fatal(err)
	}
	params := `"params":{"sessionId":"s","providerName":"p"}`
	peer.write(frame(`{"jsonrpc":"2.0","id":null,"method":"providerToken.getToken",` + params + `}`))
	for _, id := range []string{`0`, `7`, `"seven"`, `""`, `9223372036854775807`} {
		peer.write(frame(`{"jsonrpc":"2.0","id":` + id + `,"method":"providerToken.getToken",` + params + `}`))
		m := peer.rawReply(t)
		var r struct {
			ID     json.RawMessage `json:"id"`
			Result struct {
				Token string `json:"token"`
			} `json:"result"`
		}
		if err := json.Unmarshal(m, &r); err != nil {
			t.Fatalf("reply %s: %v", m, err)
		}
		if string(r.ID) != id || r.Result.Token != "tok-id" {
			t.Errorf("request id %s answered %s", id, m)
		}
	}
	select {
	case m := <-peer.replies:
		t.Fatalf("unexpected reply (the null-id notification?): %s", m)
	default:
	}
}

// Token requests are served concurrently: one waiting on a slow credential
// does not hold up another on the same connection.
func TestConnSlowCredentialDoesNotBlockConnection(t *testing.T) {
	verifyNoLeaks(t)
	b := newTestBroker(t, actors.Options{RequestTimeout: time.Hour})
	rt := dial(t, b, ConnOptions{}, nil)
	slow := newBlockingSource("tok-slow")
	err := rt.client.Router().Open("s", []actors.Provider{{Name: "slow", Source: slow}, {Name: "fast", Source: staticSource("tok-fast")}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := rt.token(context.Background(), MethodGetToken, "s", "slow"); err != nil {
			t.Errorf("slow: %v", err)
		}
	}()
	waitFor(t, "slow credential called", slow.started)
	raw, err := rt.token(context.Background(), MethodGetToken, "s", "fast")
	if err != nil || string(raw) != `{"token":"tok-fast"}` {
		t.Fatalf("fast while slow pending: %s %v", raw, err)
	}
	close(slow.release)
	wg.Wait()
}

// At MaxInFlight requests being answered the connection stops reading: the
// next messages wait in the runtime's pipe (a notification behind them is
// not delivered either) until an answer frees a slot, and nothing is
// refused meanwhile. The runtime side is raw frames from one goroutine: a
// second writer would wait on a mutex, which synctest cannot wait out.
func TestConnInFlightCapStopsReading(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const limit, calls = 4, 10
		release := make(chan struct{})
		var running, peak atomic.Int32
		notified := make(chan struct{}, 1)
		next := handlerFunc(func(ctx context.Context, conn *jsonrpc2.Conn, req *jsonrpc2.Request) {
			if req.Notif {
				notified <- struct{}{}
				return
			}
			n := running.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			<-release
			running.Add(-1)
			_ = conn.Reply(ctx, req.ID, "done")
		})
		b := actors.NewBroker(actors.Options{})
		client, peer := dialRaw(t, b, ConnOptions{MaxInFlight: limit}, next)
		go func() {
			for i := range calls {
				peer.write(frame(`{"jsonrpc":"2.0","id":` + strconv.Itoa(i) + `,"method":"work"}`))
			}
			peer.write(frame(`{"jsonrpc":"2.0","method":"event"}`))
		}()
		synctest.Wait()
		if n := running.Load(); n != limit {
			t.Errorf("%d requests being answered at the cap, want %d", n, limit)
		}
		select {
		case <-notified:
			t.Error("a notification behind the capped requests was read")
		default:
		}

		close(release)
		for range calls {
			if r := peer.reply(t); r["result"] != "done" {
				t.Errorf("reply %v", r)
			}
		}
		synctest.Wait()
		if p := peak.Load(); p != limit {
			t.Errorf("at most %d requests answered at once, want %d", p, limit)
		}
		select {
		case <-notified:
		default:
			t.Error("notification not delivered once slots freed")
		}
		_ = client.Close()
		if err := b.Close(); err != nil {
			t.Error(err)
		}
	})
}

// A runtime that stops reading its replies cannot hold more than a bounded
// amount of memory on our side: 100,000 token requests sent without reading
// a reply leave at most MaxInFlight requests in progress, heap plus
// goroutine stacks stay under memBound, and once the runtime reads again
// every request is answered and the connection serves on.
func TestConnUnreadRepliesUseBoundedMemory(t *testing.T) {
	const requests = 100_000
	const memBound = 64 << 20 // documented in BENCHMARKS.md
	verifyNoLeaks(t)
	b := newTestBroker(t, actors.Options{})
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	clientEnd, runtimeEnd := net.Pipe()
	client := NewConn(context.Background(), b, clientEnd, nil, ConnOptions{})
	t.Cleanup(func() {
		_ = runtimeEnd.Close()
		_ = client.Close()
	})
	if err := client.Router().Open("s", []actors.Provider{{Name: "p", Source: staticSource("tok-mem")}}); err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	var sent atomic.Int64
	go func() {
		w := bufio.NewWriter(runtimeEnd)
		for id := range requests {
			if _, err := w.WriteString(frame(`{"jsonrpc":"2.0","id":` + strconv.Itoa(id) + `,"method":"providerToken.getToken","params":{"sessionId":"s","providerName":"p"}}`)); err != nil {
				wrote <- err
				return
			}
			sent.Add(1)
		}
		wrote <- w.Flush()
	}()
	// Measure once the runtime's writes stall (or, were nothing capped, all
	// went through). Stalling early on a busy machine only measures less.
	last := int64(-1)
	eventually(t, "the runtime's writes stalling", func() bool {
		time.Sleep(100 * time.Millisecond)
		n := sent.Load()
		stalled := n == last || n == requests
		last = n
		return stalled
	})

	var stuck runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&stuck)
	held := int64(stuck.HeapInuse+stuck.StackInuse) - int64(before.HeapInuse+before.StackInuse)
	t.Logf("held with %d requests sent, %d in flight: heap %+d KiB, stacks %+d KiB, goroutines %d",
		sent.Load(), len(client.slots), (int64(stuck.HeapInuse)-int64(before.HeapInuse))>>10, (int64(stuck.StackInuse)-int64(before.StackInuse))>>10, runtime.NumGoroutine())
	if held > memBound {
		t.Errorf("a runtime not reading its replies made the connection hold %d MiB, bound %d MiB", held>>20, memBound>>20)
	}

	r := bufio.NewReader(runtimeEnd)
	readReply := func() {
		var m struct {
			Result struct{ Token string }
			Error  *jsonrpc2.Error
		}
		if err := (codec{}).ReadObject(r, &m); err != nil || m.Result.Token != "tok-mem" {
			t.Fatalf("reply: %+v %v", m, err)
		}
	}
	for range requests {
		readReply()
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(runtimeEnd, frame(`{"jsonrpc":"2.0","id":"again","method":"providerToken.getToken","params":{"sessionId":"s","providerName":"p"}}`)); err != nil {
		t.Fatal(err)
	}
	readReply()
}

// Requests waiting for a token hold their method and id, not their
// params: 16 requests padded with 1 MiB each (in params, _meta and an extra
// top-level field), all waiting on a hung credential, hold far less than
// the 16 MiB they carried (without the drop they hold all of it).
func TestConnWaitingRequestsDropTheirPadding(t *testing.T) {
	const inFlight = 16
	const padding = 1 << 20
	verifyNoLeaks(t)
	b := newTestBroker(t, actors.Options{})
	src := newBlockingSource("tok-pad")
	clientEnd, runtimeEnd := net.Pipe()
	client := NewConn(context.Background(), b, clientEnd, nil, ConnOptions{MaxInFlight: inFlight})
	t.Cleanup(func() {
		close(src.release)
		_ = runtimeEnd.Close()
		_ = client.Close()
	})
	if err := client.Router().Open("s", []actors.Provider{{Name: "p", Source: src}}); err != nil {
		t.Fatal(err)
	}
	// Read the replies the runtime gets at the end, so that no write waits.
	go func() { _, _ = io.Copy(io.Discard, runtimeEnd) }()

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	pad := `"` + strings.Repeat("x", padding/3) + `"`
	w := bufio.NewWriter(runtimeEnd)
	for id := range inFlight {
		body := `{"jsonrpc":"2.0","id":` + strconv.Itoa(id) + `,"method":"providerToken.getToken","pad":` + pad +
			`,"params":{"sessionId":"s","providerName":"p","pad":` + pad + `,"_meta":{"pad":` + pad + `}}}`
		if _, err := w.WriteString(frame(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the credential call", src.started)
	eventually(t, "every request in flight", func() bool { return len(client.slots) == inFlight })

	var waiting runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&waiting)
	held := int64(waiting.HeapInuse) - int64(before.HeapInuse)
	t.Logf("%d requests of %d KiB waiting: heap %+d KiB", inFlight, padding>>10, held>>10)
	if held > inFlight*padding/2 {
		t.Errorf("%d waiting requests hold %d MiB: their padding was kept", inFlight, held>>20)
	}
}

// A runtime that never reads its replies ends the connection after
// WriteTimeout, and its sessions stop, as for broken framing: over a
// net.Pipe and over a pair of io.Pipes (no deadlines, like a plain stdio
// ReadWriteCloser).
func TestConnWriteTimeoutEndsConnection(t *testing.T) {
	for name, pipe := range map[string]func() (io.ReadWriteCloser, io.ReadWriteCloser){
		"net.Pipe": func() (io.ReadWriteCloser, io.ReadWriteCloser) { return net.Pipe() },
		"io.Pipe":  ioPipes,
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := actors.NewBroker(actors.Options{})
				clientEnd, runtimeEnd := pipe()
				client := NewConn(context.Background(), b, clientEnd, nil, ConnOptions{})
				if err := client.Router().Open("s", []actors.Provider{{Name: "p", Source: staticSource("tok-unread")}}); err != nil {
					t.Fatal(err)
				}
				go func() {
					_, _ = io.WriteString(runtimeEnd, frame(`{"jsonrpc":"2.0","id":1,"method":"providerToken.getToken","params":{"sessionId":"s","providerName":"p"}}`))
				}()
				start := time.Now()
				time.Sleep(defaultWriteTimeout - time.Millisecond)
				synctest.Wait()
				select {
				case <-client.Done():
					t.Errorf("connection ended after %s, before its write timeout", time.Since(start))
				default:
				}
				time.Sleep(2 * time.Millisecond)
				synctest.Wait()
				select {
				case <-client.Done():
				default:
					t.Errorf("connection still open %s after a write the runtime never read", time.Since(start))
				}
				if n := client.Router().Len(); n != 0 {
					t.Errorf("%d sessions still open after the connection ended", n)
				}
				_ = runtimeEnd.Close()
				_ = client.Close()
				if err := b.Close(); err != nil {
					t.Error(err)
				}
			})
		})
	}
}

// ioPipes is a connection of two io.Pipes: nothing in it has deadlines.
func ioPipes() (io.ReadWriteCloser, io.ReadWriteCloser) {
	ar, bw := io.Pipe()
	br, aw := io.Pipe()
	return pipeEnd{ar, aw}, pipeEnd{br, bw}
}

type pipeEnd struct {
	*io.PipeReader
	*io.PipeWriter
}

func (p pipeEnd) Close() error {
	_ = p.PipeWriter.Close()
	return p.PipeReader.Close()
}
