// Package oauth2source adapts a golang.org/x/oauth2 TokenSource to a
// tokens.Source.
//
// The token's Expiry becomes its ExpiresOn; a token without an expiry is
// bare (single use: the broker asks again for every request). Only bearer
// tokens are accepted.
//
// oauth2.TokenSource takes no context. The call runs in its own goroutine
// so that a hanging token endpoint still gives the caller an error when its
// context ends; the goroutine itself ends only when the TokenSource
// returns, so give the TokenSource an HTTP client with a timeout (for
// instance through the context passed to oauth2.Config.TokenSource, under
// the oauth2.HTTPClient key).
//
// Most oauth2 TokenSources (clientcredentials, google, ReuseTokenSource)
// cache their token until shortly before it expires; the broker's earlier
// refreshes are then answered from that cache, and the broker keeps asking
// as the token ages, so it refreshes when the TokenSource does.
package oauth2source

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/tokens"
)

// ErrNotBearer is returned for a token of another type (e.g. "mac"): the
// runtime sends every token as "Authorization: Bearer <token>".
var ErrNotBearer = errors.New("oauth2source: token is not a bearer token")

// New returns a Source backed by ts. The request (session, provider,
// scope) is not passed on: an oauth2.TokenSource is configured with its
// scopes up front.
func New(ts oauth2.TokenSource) tokens.Source {
	if ts == nil {
		panic("oauth2source.New: nil TokenSource")
	}
	return source{ts}
}

type source struct{ ts oauth2.TokenSource }

type result struct {
	tok *oauth2.Token
	err error
}

// Token implements tokens.Source.
func (s source) Token(ctx context.Context, _ tokens.Request) (tokens.Token, error) {
	if err := ctx.Err(); err != nil {
		return tokens.Token{}, err
	}
	ch := make(chan result, 1) // buffered: a late answer does not block the goroutine
	go func() {
		defer func() {
			if v := recover(); v != nil {
				ch <- result{err: fmt.Errorf("oauth2source: TokenSource panicked (%T)", v)}
			}
		}()
		t, err := s.ts.Token()
		ch <- result{t, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		return tokens.Token{}, fmt.Errorf("oauth2source: no token before the deadline: %w", ctx.Err())
	}
	if r.err != nil {
		return tokens.Token{}, describe(r.err)
	}
	if r.tok == nil {
		return tokens.Token{}, errors.New("oauth2source: TokenSource returned no token")
	}
	if typ := r.tok.TokenType; typ != "" && !strings.EqualFold(typ, "bearer") {
		return tokens.Token{}, fmt.Errorf("%w (type %q)", ErrNotBearer, typ)
	}
	return tokens.Token{Value: r.tok.AccessToken, ExpiresOn: r.tok.Expiry}, nil
}

// describe keeps an oauth2.RetrieveError's status and OAuth2 error fields
// and drops its body, which its Error() otherwise prints verbatim. Every
// text is scrubbed by tokens.Scrub.
func describe(err error) error {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		return &scrubbed{msg: tokens.Scrub("oauth2source: " + err.Error()), err: err}
	}
	msg := "oauth2source: token endpoint answered"
	if re.Response != nil {
		msg += fmt.Sprintf(" HTTP %d", re.Response.StatusCode)
	}
	if re.ErrorCode != "" {
		msg += " " + re.ErrorCode
	}
	if d := strings.TrimSpace(re.ErrorDescription); d != "" {
		if i := strings.IndexByte(d, '\n'); i >= 0 {
			d = d[:i]
		}
		if len(d) > 300 {
			d = d[:300] + "..."
		}
		msg += ": " + d
	}
	return errors.New(tokens.Scrub(msg))
}

// scrubbed is a TokenSource's error with a scrubbed text; errors.Is and
// errors.As still reach the original.
type scrubbed struct {
	msg string
	err error
}

func (e *scrubbed) Error() string { return e.msg }
func (e *scrubbed) Unwrap() error { return e.err }
