package transport

// Fuzz targets for everything the runtime can send. `go test` runs them on
// their seed corpora (testdata/fuzz); `make fuzz` runs each for FUZZTIME.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/tokenbroker/tokenbroker/actors"
)

// FuzzDecodeTokenRequest: any params either decode to a request naming a
// non-empty session and provider taken from the params, or are refused
// with -32602; a plain well-typed object is never refused.
func FuzzDecodeTokenRequest(f *testing.F) {
	for _, s := range []string{
		`{"sessionId":"s","providerName":"p"}`,
		`{"sessionId":"s","providerName":"p","scope":"https://x/.default","_meta":{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}`,
		`{"sessionId":"","providerName":"p"}`,
		`{"sessionId":null,"providerName":"p"}`,
		`{"sessionId":1,"providerName":"p"}`,
		`{"sessionId":"s","providerName":["p"]}`,
		`{"sessionId":"s","providerName":"p","scope":7}`,
		`{"SESSIONID":"s","providerName":"p"}`,
		`{"sessionId":"a","sessionId":"b","providerName":"p"}`,
		`["s","p"]`, `null`, `"s"`, `{`, ``, ` {"sessionId":"s","providerName":"p"}`,
		`{"sessionId":"\u0000\ud800","providerName":"p\\"}`,
	} {
		f.Add(false, []byte(s))
		f.Add(true, []byte(s))
	}
	f.Fuzz(func(t *testing.T, acquire bool, params []byte) {
		method := MethodGetToken
		if acquire {
			method = MethodAcquire
		}
		raw := json.RawMessage(params)
		req, _, rpcErr := decodeTokenRequest(method, &raw)
		if rpcErr != nil {
			if rpcErr.Code != jsonrpc2.CodeInvalidParams || !strings.HasPrefix(rpcErr.Message, method+": ") {
				t.Fatalf("refusal %d %q", rpcErr.Code, rpcErr.Message)
			}
			if mustAccept(params) {
				t.Fatalf("well-typed params refused: %q", rpcErr.Message)
			}
			return
		}
		if req.SessionID == "" || req.ProviderName == "" {
			t.Fatalf("accepted an empty field: %+v", req)
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(params, &obj); err != nil {
			t.Fatalf("accepted params that are not an object: %v", err)
		}
		if !hasStringField(obj, "sessionId", req.SessionID) || !hasStringField(obj, "providerName", req.ProviderName) {
			t.Fatalf("decoded %+v, not in the params", req)
		}
		if req.Scope != "" && (!acquire || !hasStringField(obj, "scope", req.Scope)) {
			t.Fatalf("scope %q from %s params", req.Scope, method)
		}
	})
}

// hasStringField: obj has a key matching name (encoding/json matches keys
// case-insensitively) whose value is the string want.
func hasStringField(obj map[string]json.RawMessage, name, want string) bool {
	for k, v := range obj {
		var s string
		if strings.EqualFold(k, name) && json.Unmarshal(v, &s) == nil && s == want {
			return true
		}
	}
	return false
}

// mustAccept: an object whose sessionId and providerName are non-empty
// strings, whose scope is absent or a string, and with no key that is a
// case variant of those.
func mustAccept(params []byte) bool {
	if len(params) == 0 || params[0] != '{' {
		return false
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(params, &obj) != nil {
		return false
	}
	// Duplicate keys are collapsed by the map; encoding/json keeps the last.
	if dec := json.NewDecoder(bytes.NewReader(params)); !uniqueKeys(dec) {
		return false
	}
	known := []string{"sessionId", "providerName", "scope", "_meta"}
	for k := range obj {
		for _, n := range known {
			if strings.EqualFold(k, n) && k != n {
				return false
			}
		}
	}
	for _, n := range []string{"sessionId", "providerName"} {
		var s string
		if json.Unmarshal(obj[n], &s) != nil || s == "" {
			return false
		}
	}
	if v, ok := obj["scope"]; ok {
		var s *string
		if json.Unmarshal(v, &s) != nil {
			return false
		}
	}
	return true
}

// uniqueKeys reports whether the top-level object has no repeated key.
func uniqueKeys(dec *json.Decoder) bool {
	if _, err := dec.Token(); err != nil {
		return false
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		k, _ := tok.(string)
		if seen[strings.ToLower(k)] {
			return false
		}
		seen[strings.ToLower(k)] = true
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return false
		}
	}
	return true
}

// FuzzDecodeTokenRequestFields: whatever strings the runtime puts in the
// fields come back unchanged; empty ones are refused.
func FuzzDecodeTokenRequestFields(f *testing.F) {
	f.Add(true, "tenant-a-7f3c", "mi", "https://cognitiveservices.azure.com/.default")
	f.Add(false, "s", "default", "")
	f.Add(true, "", "p", "x")
	f.Add(false, "s\x00\xff\"\\", "p/q", "\u2028")
	f.Fuzz(func(t *testing.T, acquire bool, session, provider, scope string) {
		method := MethodGetToken
		if acquire {
			method = MethodAcquire
		}
		b, err := json.Marshal(map[string]string{"sessionId": session, "providerName": provider, "scope": scope})
		if err != nil {
			t.Fatal(err)
		}
		raw := json.RawMessage(b)
		req, _, rpcErr := decodeTokenRequest(method, &raw)
		if session == "" || provider == "" {
			if rpcErr == nil {
				t.Fatalf("empty field accepted: %+v", req)
			}
			return
		}
		if rpcErr != nil {
			t.Fatalf("refused: %s", rpcErr.Message)
		}
		wantScope := ""
		if acquire {
			wantScope = viaJSON(scope)
		}
		if req.SessionID != viaJSON(session) || req.ProviderName != viaJSON(provider) || req.Scope != wantScope {
			t.Fatalf("fields changed: %q %q %q", req.SessionID, req.ProviderName, req.Scope)
		}
	})
}

// viaJSON is s after a JSON round trip (invalid UTF-8 becomes U+FFFD).
func viaJSON(s string) string {
	b, _ := json.Marshal(s)
	var out string
	_ = json.Unmarshal(b, &out)
	return out
}

// fuzzFrameCap keeps fuzzed frames small, so the cap is easy to cross.
const fuzzFrameCap = 256

// FuzzReadObject: on any byte stream the reader ends with one of its
// documented errors, makes progress on every message, returns only valid
// JSON within the cap, and reports a clean end only at the end.
func FuzzReadObject(f *testing.F) {
	for _, s := range []string{
		frame(`{"jsonrpc":"2.0","id":1,"method":"providerToken.getToken","params":{"sessionId":"s","providerName":"p"}}`),
		frame(`{}`) + frame(`not json`) + frame(`[]`),
		"Content-Length: 5\r\n\r\n{}",
		"Content-Length: 257\r\n\r\n",
		"Content-Length: 1099511627776\r\n\r\n",
		"Content-Length: -1\r\n\r\n",
		"Content-Type: x\r\n\r\n{}",
		"Content-Length: 2\n\n{}",
		"Content-Length 2\r\n\r\n{}",
		"content-length:2\r\ncontent-length:3\r\n\r\n{} ",
		"\r\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		src := bytes.NewReader(data)
		r := bufio.NewReaderSize(src, 16)
		left := func() int { return src.Len() + r.Buffered() }
		c := codec{maxFrameSize: fuzzFrameCap}
		for {
			before := left()
			var m json.RawMessage
			err := c.ReadObject(r, &m)
			if err != nil {
				switch {
				case errors.Is(err, io.EOF):
					if left() != 0 {
						t.Fatalf("clean EOF with %d bytes left", left())
					}
				case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, errBadFrame), errors.Is(err, errFrameTooLarge):
				default:
					t.Fatalf("undocumented error %v", err)
				}
				return
			}
			if left() >= before {
				t.Fatal("a message was read without consuming input")
			}
			if len(m) > fuzzFrameCap || !json.Valid(m) {
				t.Fatalf("returned %d bytes, valid JSON %v", len(m), json.Valid(m))
			}
		}
	})
}

// FuzzConn feeds arbitrary bytes to a real connection as the runtime and
// checks what comes back: the connection always ends when the stream
// does, and every reply answers a request that was sent, with that
// request's id; a token goes only to a request for the session and
// provider that own it.
func FuzzConn(f *testing.F) {
	req := func(id, method, params string) string {
		return frame(`{"jsonrpc":"2.0","id":` + id + `,"method":"` + method + `","params":` + params + `}`)
	}
	good := `{"sessionId":"s","providerName":"p"}`
	for _, s := range []string{
		req(`1`, MethodGetToken, good),
		req(`"a"`, MethodAcquire, `{"sessionId":"s","providerName":"p","scope":"sc"}`),
		req(`2`, MethodGetToken, `{"sessionId":"other","providerName":"p"}`),
		req(`3`, MethodGetToken, `{"sessionId":"s","providerName":"q"}`),
		req(`4`, MethodGetToken, `null`),
		req(`5`, MethodGetToken, `{"sessionId":5}`),
		req(`6`, "no.such.method", `{}`),
		req(`-1`, MethodGetToken, good),
		req(`1.5`, MethodGetToken, good) + frame(`{"jsonrpc":"2.0","id":9,"result":{}}`),
		req(`1e400`, MethodGetToken, good) + req(`7`, MethodGetToken, good),
		req(`null`, MethodGetToken, good),
		req(`18446744073709551615`, MethodGetToken, good),
		req(`{}`, MethodGetToken, good),
		frame(`[` + `{"jsonrpc":"2.0","id":1,"method":"x"}` + `]`),
		frame("\xff garbage") + req(`8`, MethodGetToken, good),
		"Content-Length: 1099511627776\r\n\r\n",
		"Content-Length: 3\r\n\r\n{",
		req(`10`, MethodGetToken, good)[:30],
	} {
		f.Add([]byte(s))
	}
	b := actors.NewBroker(actors.Options{RequestTimeout: time.Second})
	f.Cleanup(func() { _ = b.Close() })
	src := staticSource("tok-fuzz-owner")
	f.Fuzz(func(t *testing.T, data []byte) {
		clientEnd, runtimeEnd := net.Pipe()
		conn := NewConn(context.Background(), b, clientEnd, nil, ConnOptions{MaxFrameSize: fuzzFrameCap})
		if err := conn.Router().Open("s", []actors.Provider{{Name: "p", Scope: "sc", Source: src}}); err != nil {
			t.Fatal(err)
		}
		var replies []json.RawMessage
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := bufio.NewReader(runtimeEnd)
			for {
				var m json.RawMessage
				if (codec{}).ReadObject(r, &m) != nil {
					return
				}
				replies = append(replies, m)
			}
		}()
		_, _ = runtimeEnd.Write(data)
		// Give in-flight requests a moment to be answered, then hang up.
		time.Sleep(time.Millisecond)
		_ = runtimeEnd.Close()
		waitFor(t, "connection ending with its stream", conn.Done())
		wg.Wait()
		eventually(t, "router of the ended connection closing", func() bool { return conn.Router().Len() == 0 })

		sent := requestsIn(data)
		for _, m := range replies {
			var rep struct {
				ID     json.RawMessage `json:"id"`
				Result *struct {
					Token string `json:"token"`
				} `json:"result"`
				Error *jsonrpc2.Error `json:"error"`
			}
			if err := json.Unmarshal(m, &rep); err != nil || (rep.Result == nil) == (rep.Error == nil) {
				t.Fatalf("malformed reply %s", m)
			}
			asked, ok := sent[canonicalID(rep.ID)]
			if !ok {
				t.Fatalf("reply %s answers no request that was sent", m)
			}
			if rep.Result != nil && rep.Result.Token != "" && !asked.forOwner {
				t.Fatalf("token given to a request that does not name its session and provider: %s", m)
			}
		}
	})
}

type sentRequest struct{ forOwner bool }

// requestsIn parses the fuzzed stream independently of the connection:
// the id of every framed request, and whether one with that id names the
// session and provider owning the token.
func requestsIn(data []byte) map[string]sentRequest {
	out := map[string]sentRequest{}
	r := bufio.NewReader(bytes.NewReader(data))
	for {
		body, err := readFrame(r, fuzzFrameCap)
		if err != nil {
			return out
		}
		var m struct {
			ID     json.RawMessage `json:"id"`
			Method *string         `json:"method"`
			Params json.RawMessage `json:"params"`
		}
		if json.Unmarshal(body, &m) != nil || m.Method == nil {
			continue
		}
		id := canonicalID(m.ID)
		s := out[id]
		var p struct {
			SessionID    string `json:"sessionId"`
			ProviderName string `json:"providerName"`
		}
		if (*m.Method == MethodGetToken || *m.Method == MethodAcquire) && json.Unmarshal(m.Params, &p) == nil &&
			p.SessionID == "s" && p.ProviderName == "p" {
			s.forOwner = true
		}
		out[id] = s
	}
}

// canonicalID maps an id to how jsonrpc2 echoes it: numbers as unsigned
// integers (a negative one wraps), strings as themselves.
func canonicalID(raw json.RawMessage) string {
	var id jsonrpc2.ID
	if err := json.Unmarshal(raw, &id); err == nil {
		return id.String()
	}
	var n json.Number
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if dec.Decode(&n) == nil {
		if v, err := n.Int64(); err == nil {
			return jsonrpc2.ID{Num: uint64(v)}.String()
		}
	}
	return "unparsable:" + string(raw)
}
