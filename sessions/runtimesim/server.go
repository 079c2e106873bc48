package runtimesim

import (
	"context"
	"io"
	"net"
	"sync"

	"github.com/tokenbroker/tokenbroker/sessions/runtimesim/fakemodel"
)

// Server is a Runtime and a fake model endpoint running in this process, the
// way httptest.Server runs an http.Handler: a test starts one, connects its
// runtime client (or its own JSON-RPC code) with Dial, points its sessions'
// providers at Model.URL(), and afterwards reads what the runtime received
// through the embedded Runtime (Stats, TokenRequests, ModelRequests) and
// what the model endpoint received through Model.
type Server struct {
	*Runtime
	// Model is the fake OpenAI-compatible endpoint on 127.0.0.1. Its
	// Options (given to NewServer) and methods script what it answers; its
	// Requests hold each request's Authorization header.
	Model *fakemodel.Server

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewServer starts a fake model endpoint with model and a Runtime with rt.
// Close stops both.
func NewServer(rt Options, model fakemodel.Options) (*Server, error) {
	m, err := fakemodel.Start(model)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{Runtime: New(rt), Model: m, ctx: ctx, cancel: cancel}, nil
}

// Dial returns the client end of a new in-memory connection that the
// runtime serves until either end closes it or the Server closes. Each
// connection has its own sessions, like one runtime process per client.
func (s *Server) Dial() io.ReadWriteCloser {
	clientEnd, runtimeEnd := net.Pipe()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = s.Serve(s.ctx, runtimeEnd) // ends with its connection
	}()
	return clientEnd
}

// Close ends every connection, waits for their turns to stop and stops the
// model endpoint.
func (s *Server) Close() error {
	s.cancel()
	s.wg.Wait()
	return s.Model.Close()
}

// ServeListener serves every connection ln accepts, each as Serve does,
// until ctx ends (then it returns nil) or ln fails. It closes ln and waits
// for the connections to end before returning.
func (r *Runtime) ServeListener(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Go(func() { _ = r.Serve(ctx, c) })
	}
}
