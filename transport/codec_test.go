package transport

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/tokenbroker/tokenbroker/internal/capture"
)

func frame(body string) string {
	return "Content-Length: " + itoa(len(body)) + "\r\n\r\n" + body
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func readAll(c codec, in string) ([]json.RawMessage, error) {
	r := bufio.NewReader(strings.NewReader(in))
	var out []json.RawMessage
	for {
		var m json.RawMessage
		if err := c.ReadObject(r, &m); err != nil {
			return out, err
		}
		out = append(out, m)
	}
}

func TestCodecRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	c := codec{}
	msgs := []any{
		map[string]any{"jsonrpc": "2.0", "id": 1, "method": "x", "params": map[string]string{"a": "é\r\n"}},
		map[string]any{"jsonrpc": "2.0", "id": 1, "result": nil},
	}
	for _, m := range msgs {
		if err := c.WriteObject(&buf, m); err != nil {
			t.Fatal(err)
		}
	}
	got, err := readAll(c, buf.String())
	if !errors.Is(err, io.EOF) || len(got) != len(msgs) {
		t.Fatalf("read %d messages, err %v", len(got), err)
	}
	for i, m := range msgs {
		want, _ := json.Marshal(m)
		var a, b any
		_ = json.Unmarshal(want, &a)
		_ = json.Unmarshal(got[i], &b)
		if !jsonEqual(a, b) {
			t.Errorf("message %d: got %s want %s", i, got[i], want)
		}
	}
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// Every way a frame can be broken, and the error that closes the connection.
func TestCodecFrameErrors(t *testing.T) {
	long := strings.Repeat("x", 2000)
	cases := []struct {
		name, in string
		want     error
	}{
		{"clean end", "", io.EOF},
		{"clean end after a frame", frame(`{}`), io.EOF},
		{"truncated body", "Content-Length: 10\r\n\r\n{}", io.ErrUnexpectedEOF},
		{"end inside the header line", "Content-Len", io.ErrUnexpectedEOF},
		{"end between header lines", "Content-Length: 2\r\n", io.ErrUnexpectedEOF},
		{"not a number", "Content-Length: ten\r\n\r\n", errBadFrame},
		{"negative", "Content-Length: -1\r\n\r\n", errBadFrame},
		{"overflowing int64", "Content-Length: 99999999999999999999999\r\n\r\n", errBadFrame},
		{"no Content-Length", "Content-Type: application/json\r\n\r\n{}", errBadFrame},
		{"no colon", "Content-Length 2\r\n\r\n{}", errBadFrame},
		{"LF line endings", "Content-Length: 2\n\n{}", errBadFrame},
		{"endless header line", "Content-Length: 2" + long + "\r\n\r\n{}", errBadFrame},
		{"endless header without newline", long, errBadFrame},
		{"over the cap", "Content-Length: 1025\r\n\r\n", errFrameTooLarge},
		{"1 TiB declared", "Content-Length: 1099511627776\r\n\r\n", errFrameTooLarge},
		{"max int64 declared", "Content-Length: 9223372036854775807\r\n\r\n", errFrameTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readAll(codec{maxFrameSize: 1024}, tc.in)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// Headers other than Content-Length are accepted and ignored, in any case
// and with any spacing; a frame exactly at the cap is fine.
func TestCodecHeaderVariants(t *testing.T) {
	body := `{"a":1}`
	in := "content-type: application/vscode-jsonrpc; charset=utf-8\r\ncontent-length:   7  \r\n\r\n" + body +
		"Content-Length: 7\r\nContent-Type: x\r\n\r\n" + body
	got, err := readAll(codec{maxFrameSize: len(body)}, in)
	if !errors.Is(err, io.EOF) || len(got) != 2 || string(got[1]) != body {
		t.Fatalf("got %q, %v", got, err)
	}
}

// A frame declaring more than the cap is refused before its body is
// allocated: the allocation per refused frame stays far below its size.
func TestCodecOversizeFrameIsNotAllocated(t *testing.T) {
	const limit = 8 << 20
	header := "Content-Length: " + itoa(limit+1) + "\r\n\r\n"
	c := codec{maxFrameSize: limit}
	var m json.RawMessage
	var ms0, ms1 runtime.MemStats
	const runs = 20
	var errs int
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	for range runs {
		// The body is not there at all: a reader that tried to read it
		// would fail with ErrUnexpectedEOF instead.
		if err := c.ReadObject(bufio.NewReader(strings.NewReader(header)), &m); errors.Is(err, errFrameTooLarge) {
			errs++
		}
	}
	runtime.ReadMemStats(&ms1)
	if errs != runs {
		t.Fatalf("%d of %d oversize frames refused", errs, runs)
	}
	perRun := (ms1.TotalAlloc - ms0.TotalAlloc) / runs
	t.Logf("bytes allocated per refused %d-byte frame: %d", limit+1, perRun)
	if perRun > 64<<10 {
		t.Fatalf("refusing an oversize frame allocated %d bytes", perRun)
	}
}

// A header announcing a large body does not make the reader hold that much
// before the bytes arrive: 8 frames announcing 16 MiB each, whose peers
// sent 1 KiB of body and stopped, used to hold 128 MiB.
func TestCodecAnnouncedBodyIsNotAllocatedUpFront(t *testing.T) {
	const announced, sent, frames = defaultMaxFrameSize, 1 << 10, 8
	in := "Content-Length: " + itoa(announced) + "\r\n\r\n" + strings.Repeat(" ", sent)
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	for range frames {
		var m json.RawMessage
		if err := (codec{}).ReadObject(bufio.NewReader(strings.NewReader(in)), &m); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("truncated body: %v, want %v", err, io.ErrUnexpectedEOF)
		}
	}
	runtime.ReadMemStats(&ms1)
	perFrame := (ms1.TotalAlloc - ms0.TotalAlloc) / frames
	t.Logf("bytes allocated per frame announcing %d bytes and sending %d: %d", announced, sent, perFrame)
	if perFrame > 256<<10 {
		t.Fatalf("a frame announcing %d bytes and sending %d allocated %d bytes", announced, sent, perFrame)
	}
}

// A large body that arrives in small pieces is read whole: the buffer grows
// as it fills, across many reads.
func TestCodecLargeBodyInPieces(t *testing.T) {
	param := strings.Repeat("abcdefghij", 300_000) // 3 MB, several doublings past the first chunk
	msg := map[string]any{"jsonrpc": "2.0", "id": 7, "method": "x", "params": map[string]string{"p": param}}
	var buf bytes.Buffer
	if err := (codec{}).WriteObject(&buf, msg); err != nil {
		t.Fatal(err)
	}
	var req jsonrpc2.Request
	if err := (codec{}).ReadObject(bufio.NewReader(iotest.HalfReader(&buf)), &req); err != nil {
		t.Fatal(err)
	}
	var p map[string]string
	if err := json.Unmarshal(*req.Params, &p); err != nil || p["p"] != param || req.Method != "x" {
		t.Fatalf("large body read back wrong: method %q, %d bytes of param, %v", req.Method, len(p["p"]), err)
	}
}

// A well-framed body that is not a JSON-RPC message is skipped (and
// logged); the stream stays in sync and the next message is read.
func TestCodecSkipsBodiesThatAreNotMessages(t *testing.T) {
	cap := capture.New()
	defer cap.Close()
	c := codec{log: cap.Logger}
	valid := `{"jsonrpc":"2.0","id":3,"method":"ping"}`
	in := frame("not json at all") + frame(`[1,2]`) + frame(`{"id":1}`) + frame(`"str"`) + frame(valid)
	r := bufio.NewReader(strings.NewReader(in))
	var req jsonrpc2.Request
	if err := c.ReadObject(r, &req); err != nil {
		t.Fatal(err)
	}
	if req.Method != "ping" || req.ID.Num != 3 {
		t.Fatalf("read %+v", req)
	}
	if n := strings.Count(cap.Logs(), "not a JSON-RPC message"); n != 2*4 { // text + JSON rendering
		t.Fatalf("%d skip log lines, want 4 frames logged:\n%s", n/2, cap.Logs())
	}
	if err := c.ReadObject(r, &req); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last frame: %v", err)
	}
}

// A rejected frame leaves nothing behind in the value the next frame is
// decoded into. (jsonrpc2 decodes into a struct holding a request and a
// response pointer: a request whose id failed to parse, followed by a
// response, was once handled as a request with id 0.)
func TestCodecSkippedFrameLeavesNoTrace(t *testing.T) {
	in := frame(`{"A":"from the rejected frame","B":"not a number"}`) + frame(`{"B":1}`)
	var v struct {
		A string
		B int
	}
	if err := (codec{}).ReadObject(bufio.NewReader(strings.NewReader(in)), &v); err != nil {
		t.Fatal(err)
	}
	if v.A != "" || v.B != 1 {
		t.Fatalf("decoded %+v, want only the second frame's content", v)
	}
}
