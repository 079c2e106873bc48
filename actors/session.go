package actors

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/asynkron/protoactor-go/actor"
)

// session is one runtime session's token routing: its routes are fixed at
// Open, so the hot path reads them without locks.
type session struct {
	id     string
	routes []route
	// failure is the error of the latest token request, nil once one is
	// served: see Router.LastError.
	failure atomic.Pointer[failure]
	pid     *actor.PID
	done    chan struct{} // closed when the session closes: its waiters give up
	once    sync.Once
}

type route struct {
	name   string
	scope  string
	p      *provider
	served atomic.Uint64 // the token last served to the session (Grant.gen), for Router.Rejected
}

// index is the position of the route called name, -1 if none.
func (s *session) index(name string) int {
	for i := range s.routes {
		if s.routes[i].name == name {
			return i
		}
	}
	return -1
}

func (s *session) route(name string) *route {
	if i := s.index(name); i >= 0 {
		return &s.routes[i]
	}
	return nil
}

type failure struct{ err error }

// noteServed remembers which token rt's provider last served s, and that
// the latest request succeeded, storing only on a change: the hot path
// reads cache lines it rarely writes.
func (s *session) noteServed(rt *route, g Grant) {
	if rt.served.Load() != g.gen {
		rt.served.Store(g.gen)
	}
	if s.failure.Load() != nil {
		s.failure.Store(nil)
	}
}

func (s *session) noteFailure(err error) { s.failure.Store(&failure{err: err}) }

// named puts the session, provider and shared credential in front of an
// error from rt's provider, which knows its credential, not who asked.
func (s *session) named(rt *route, err error) error {
	prefix := fmt.Sprintf("session %q: provider %q: ", s.id, rt.name)
	if c := rt.p.shared; c != nil {
		prefix += fmt.Sprintf("shared credential %q: ", c.Name())
	}
	return &contextError{prefix: prefix, err: err}
}

func (s *session) close(root *actor.RootContext) {
	s.once.Do(func() {
		close(s.done)
		root.Stop(s.pid)
	})
}

// sessionActor owns its per-session provider actors (children, stopped with
// it) and holds a reference on each shared credential it uses.
type sessionActor struct {
	s        *session
	b        *Broker
	children []*actor.PID // index-aligned with s.routes
}

func newSessionProps(b *Broker, s *session) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor { return &sessionActor{s: s, b: b} })
}

func (a *sessionActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *acquire:
		if pid := a.provider(ctx, m.provider); pid != nil {
			ctx.Send(pid, m)
			return
		}
		m.reply <- reply{err: unknownProvider(a.s.id, m.provider)}
	case *actor.Started:
		a.children = make([]*actor.PID, len(a.s.routes))
		// Per-session provider actors start on first use (see provider):
		// an idle session holds one actor, not one per provider.
		for i := range a.s.routes {
			if c := a.s.routes[i].p.shared; c != nil {
				a.children[i] = c.pid
			}
		}
		a.b.sessionsOpen.Add(1)
	case *actor.Stopped:
		for i := range a.s.routes {
			if c := a.s.routes[i].p.shared; c != nil {
				c.release()
			}
		}
		a.b.sessionsOpen.Add(-1)
		a.b.live.Done()
	}
}

// provider returns the actor for the provider called name, starting a
// per-session one on its first request. Spawning three actors per session
// at Open measured 14 k open+close/s and 4.2 KB per idle session; lazily,
// an unused session costs what one with shared credentials does.
func (a *sessionActor) provider(ctx actor.Context, name string) *actor.PID {
	i := a.s.index(name)
	if i < 0 {
		return nil
	}
	if a.children[i] == nil {
		a.b.live.Add(1)
		a.children[i] = ctx.Spawn(newProviderProps(a.s.routes[i].p))
	}
	return a.children[i]
}
