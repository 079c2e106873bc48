package actors_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/internal/capture"
	"github.com/tokenbroker/tokenbroker/tokens"
)

// nilFuncSource is a func-typed Source of the service's own.
type nilFuncSource func() (tokens.Token, error)

func (f nilFuncSource) Token(context.Context, tokens.Request) (tokens.Token, error) { return f() }

// A Source that is nil inside a non-nil interface (a tokens.Func variable
// never set, a nil *Credential) can only panic when called: it is refused
// when the credential is made and when the session opens, with
// ErrNoCredential naming the provider.
func TestNilSourcesRefused(t *testing.T) {
	b := actors.NewBroker(actors.Options{})
	defer b.Close()
	var fn tokens.Func
	var bare tokens.BareFunc
	var own nilFuncSource
	var cred *actors.Credential
	for _, src := range []tokens.Source{nil, fn, bare, own, cred} {
		name := fmt.Sprintf("%T", src)
		if _, err := b.NewCredential("mi", "", src); !errors.Is(err, actors.ErrNoCredential) || !strings.Contains(err.Error(), `"mi"`) {
			t.Errorf("NewCredential with a nil %s: %v, want ErrNoCredential naming the credential", name, err)
		}
		r := b.NewRouter()
		err := r.Open("s", []actors.Provider{{Name: "ok", Source: lived("t", time.Hour)}, {Name: "broken", Source: src}})
		if !errors.Is(err, actors.ErrNoCredential) || !strings.Contains(err.Error(), `provider "broken"`) {
			t.Errorf("Open with a nil %s: %v, want ErrNoCredential naming the provider", name, err)
		}
		if r.Len() != 0 {
			t.Errorf("a session with a nil %s was opened", name)
		}
		r.Close()
	}
}

// A Source that panics: every request gets the error at once, and the
// service's log gets the panic's value, scrubbed of secrets, and its
// stack, once a minute per provider.
func TestPanickingSourceLogged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := capture.New()
		defer c.Close()
		b := newBroker(t, actors.Options{Logger: c.Logger})
		defer closeBroker(t, b)
		const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQifQ.c2lnbmF0dXJl"
		src := tokens.BareFunc(func(context.Context, tokens.Request) (string, error) {
			var m map[string]int
			m["index out of "+jwt]++ // assignment to a nil map: a bug, not a panic(...) of the Source's own
			return "", nil
		})
		other := tokens.Func(func(context.Context, tokens.Request) (tokens.Token, error) {
			panic(fmt.Sprintf("refresh of %s failed", jwt))
		})
		r := b.NewRouter()
		open(t, r, "s", actors.Provider{Name: "nilmap", Source: src}, actors.Provider{Name: "explicit", Source: other})
		for range 150 { // 150 requests each over 150 s
			for _, p := range []string{"nilmap", "explicit"} {
				_, err := acquire(r, "s", p)
				if !errors.Is(err, actors.ErrCredential) || !strings.Contains(err.Error(), "credential panicked: ") ||
					!strings.Contains(err.Error(), "service's log") || strings.Contains(err.Error(), jwt) {
					t.Fatalf("%s: %v", p, err)
				}
			}
			time.Sleep(time.Second)
		}
		logs := c.Logs()
		// Text and JSON renderings: two lines per record.
		if n := strings.Count(logs, "tokenbroker: credential panicked") / 2; n != 6 {
			t.Fatalf("%d panic logs over 150 s for 2 providers, want 6 (at 0, 60 and 120 s each)", n)
		}
		for _, want := range []string{
			"assignment to entry in nil map",            // the runtime's panic value
			"refresh of " + tokens.Redacted + " failed", // the Source's own, scrubbed
			"nilsource_test.go",                         // the stack
		} {
			if !strings.Contains(logs, want) {
				t.Errorf("the logs do not show %q", want)
			}
		}
		if strings.Contains(logs, jwt) {
			t.Error("the logs show the secret the panic held")
		}
	})
}
