package tokens_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/tokens"
)

func TestValidate(t *testing.T) {
	cases := []struct {
		value string
		want  error
	}{
		{"", tokens.ErrEmptyToken},
		{"Bearer abc", tokens.ErrBearerPrefix},
		{"bearer abc", tokens.ErrBearerPrefix},
		{"BEARER abc", tokens.ErrBearerPrefix},
		{"Bearer ", tokens.ErrBearerPrefix},
		{"Bearer", nil}, // a token that merely spells the word
		{"Bearerabc", nil},
		{"eyJhbGciOi.x.y", nil},
	}
	for _, c := range cases {
		if got := (tokens.Token{Value: c.value}).Validate(); !errors.Is(got, c.want) || (c.want == nil) != (got == nil) {
			t.Errorf("Validate(%s) = %v, want %v", tokens.Fingerprint(c.value), got, c.want)
		}
	}
}

// A token printed or logged by accident shows a fingerprint, not its value.
func TestTokenNeverPrintsValue(t *testing.T) {
	const secret = "super-secret-token-value"
	for _, tk := range []tokens.Token{
		{Value: secret},
		{Value: secret, ExpiresOn: time.Now().Add(time.Hour)},
	} {
		var logged strings.Builder
		slog.New(slog.NewTextHandler(&logged, nil)).Info("x", "tok", tk)
		for _, s := range []string{fmt.Sprint(tk), fmt.Sprintf("%v %+v %#v %s", tk, tk, tk, tk), logged.String()} {
			if strings.Contains(s, secret) {
				t.Fatalf("token value printed: %q", strings.ReplaceAll(s, secret, "<SECRET>"))
			}
			if !strings.Contains(s, tokens.Fingerprint(secret)) {
				t.Fatalf("fingerprint missing from %q", s)
			}
		}
	}
}

func TestFingerprint(t *testing.T) {
	a, b := tokens.Fingerprint("a"), tokens.Fingerprint("b")
	if len(a) != 8 || a == b || a != tokens.Fingerprint("a") {
		t.Fatalf("fingerprints %q %q", a, b)
	}
	if tokens.Fingerprint("") != "empty" {
		t.Fatal("empty fingerprint")
	}
}

func TestAdapters(t *testing.T) {
	ctx := context.Background()
	req := tokens.Request{SessionID: "s", ProviderName: "p", Scope: "sc"}
	var seen tokens.Request
	bare := tokens.BareFunc(func(_ context.Context, r tokens.Request) (string, error) {
		seen = r
		return "x", nil
	})
	got, err := bare.Token(ctx, req)
	if err != nil || got.Value != "x" || !got.Bare() || seen != req {
		t.Fatalf("BareFunc: %v %v %+v", got, err, seen)
	}
	exp := time.Now().Add(time.Hour)
	st := tokens.Static(tokens.Token{Value: "y", ExpiresOn: exp})
	got, err = st.Token(ctx, req)
	if err != nil || got.Value != "y" || !got.ExpiresOn.Equal(exp) || got.Bare() {
		t.Fatalf("Static: %v %v", got, err)
	}
}
