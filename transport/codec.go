package transport

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/sourcegraph/jsonrpc2"
)

// defaultMaxFrameSize caps one message. The runtime's largest messages are
// session events carrying model output; 16 MiB leaves ample room while a
// hostile Content-Length cannot make us allocate gigabytes.
const defaultMaxFrameSize = 16 << 20

// maxHeaderLine bounds one header line, so a peer sending a header without
// end cannot grow a buffer either.
const maxHeaderLine = 1024

// Why the codec gave up on a stream; the connection closes with it (and
// logs it). The stream cannot be resynchronised after either.
var (
	// errFrameTooLarge: a frame declares a body over the cap. Nothing of
	// that body is allocated.
	errFrameTooLarge = errors.New("transport: frame exceeds maximum size")
	// errBadFrame: the framing itself is broken.
	errBadFrame = errors.New("transport: malformed frame header")
)

// codec is the Content-Length framing of LSP and vscode-jsonrpc, with a cap
// on the frame size. A frame whose header is fine but whose body is not a
// JSON-RPC message is skipped (and logged): its length is known, so the
// stream stays in sync and the connection keeps serving.
type codec struct {
	maxFrameSize int          // 0: defaultMaxFrameSize
	log          *slog.Logger // nil: silent
}

func (codec) WriteObject(w io.Writer, obj any) error {
	return jsonrpc2.VSCodeObjectCodec{}.WriteObject(w, obj)
}

func (c codec) ReadObject(r *bufio.Reader, v any) error {
	limit := c.maxFrameSize
	if limit <= 0 {
		limit = defaultMaxFrameSize
	}
	for {
		body, err := readFrame(r, limit)
		if err != nil {
			return err
		}
		err = json.Unmarshal(body, v)
		if err == nil {
			return nil
		}
		if c.log != nil {
			c.log.Warn("tokenbroker: skipped a frame that is not a JSON-RPC message", "bytes", len(body), "error", err.Error())
		}
		// A failed decode can leave part of the rejected frame in v (e.g. a
		// request whose id did not parse); clear it, or it would surface
		// with the next message.
		if rv := reflect.ValueOf(v); rv.Kind() == reflect.Pointer && !rv.IsNil() {
			rv.Elem().SetZero()
		}
	}
}

// readFrame reads one header block and its body.
func readFrame(r *bufio.Reader, limit int) ([]byte, error) {
	length := -1
	for first := true; ; first = false {
		line, err := readLine(r)
		if err != nil {
			if !first && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // the stream ended inside a header block
			}
			return nil, err
		}
		if line == "" {
			break
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("%w: header line without ':'", errBadFrame)
		}
		if !strings.EqualFold(strings.TrimSpace(name), "Content-Length") {
			continue // e.g. Content-Type
		}
		n, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%w: bad Content-Length", errBadFrame)
		}
		if n > int64(limit) {
			return nil, fmt.Errorf("%w: %d bytes declared, limit %d", errFrameTooLarge, n, limit)
		}
		length = int(n)
	}
	if length < 0 {
		return nil, fmt.Errorf("%w: no Content-Length", errBadFrame)
	}
	return readBody(r, length)
}

// firstBodyChunk is what a body gets before its bytes arrive.
const firstBodyChunk = 64 << 10

// readBody reads n bytes, growing the buffer as they arrive (at most
// doubling it each time), so a header announcing a large body makes us hold
// no more than about twice what the peer actually sent.
func readBody(r *bufio.Reader, n int) ([]byte, error) {
	body := make([]byte, 0, min(n, firstBodyChunk))
	for len(body) < n {
		if len(body) == cap(body) {
			body = slices.Grow(body, min(n-len(body), len(body)))
		}
		m, err := r.Read(body[len(body):min(cap(body), n)])
		body = body[:len(body)+m]
		if err != nil && len(body) < n {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return body, nil
}

// readLine reads a CRLF-terminated header line without the CRLF.
func readLine(r *bufio.Reader) (string, error) {
	var buf bytes.Buffer
	for {
		chunk, err := r.ReadSlice('\n')
		buf.Write(chunk)
		if buf.Len() > maxHeaderLine {
			return "", fmt.Errorf("%w: header line too long", errBadFrame)
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) && buf.Len() > 0 {
			return "", io.ErrUnexpectedEOF
		}
		return "", err
	}
	line := buf.Bytes()
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return "", fmt.Errorf(`%w: header lines must end in \r\n`, errBadFrame)
	}
	return string(line[:len(line)-2]), nil
}
