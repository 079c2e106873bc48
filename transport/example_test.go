package transport_test

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/sourcegraph/jsonrpc2"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/transport"
)

// NewConn serves a runtime connection: token requests are answered from the
// connection's own Router, everything else goes to your handler. Here the
// runtime's end is played by a bare jsonrpc2 connection over a pipe.
func ExampleNewConn() {
	broker := actors.NewBroker(actors.Options{})
	defer broker.Close()
	clientEnd, runtimeEnd := net.Pipe()
	conn := transport.NewConn(context.Background(), broker, clientEnd, nil, transport.ConnOptions{})
	defer conn.Close()

	src := tokens.Static(tokens.Token{Value: "example-token", ExpiresOn: time.Now().Add(time.Hour)})
	if err := conn.Router().Open("s1", []actors.Provider{{Name: "default", Source: src}}); err != nil {
		panic(err)
	}

	runtime := jsonrpc2.NewConn(context.Background(), jsonrpc2.NewBufferedStream(runtimeEnd, jsonrpc2.VSCodeObjectCodec{}),
		jsonrpc2.HandlerWithError(func(context.Context, *jsonrpc2.Conn, *jsonrpc2.Request) (any, error) { return nil, nil }))
	defer runtime.Close()
	var result map[string]any
	err := runtime.Call(context.Background(), transport.MethodGetToken,
		map[string]string{"sessionId": "s1", "providerName": "default"}, &result)
	fmt.Println(result["token"], len(result), err)
	err = runtime.Call(context.Background(), transport.MethodGetToken,
		map[string]string{"sessionId": "s1", "providerName": "other"}, &result)
	fmt.Println(err)
	// Output:
	// example-token 1 <nil>
	// jsonrpc2: code -32002 message: no bearer-token provider registered for provider "other" in session "s1"
}
