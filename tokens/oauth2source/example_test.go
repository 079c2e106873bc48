package oauth2source_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokenbroker/tokenbroker/actors"
	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tokens/oauth2source"
)

// An OAuth2 client-credentials client behind one tokenbroker Credential:
// the token endpoint (an httptest server on 127.0.0.1 here) is called once
// for 100 concurrent requests, and its expires_in becomes the token's
// expiry, so the broker refreshes it ahead of time.
func Example() {
	var calls atomic.Int64
	endpoint := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if id, secret, ok := r.BasicAuth(); !ok || id != "app" || secret != "s3cret" || r.FormValue("grant_type") != "client_credentials" {
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return
		}
		n := calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": fmt.Sprint("oauth-token-", n), "token_type": "Bearer", "expires_in": 3600})
	}))
	defer endpoint.Close()

	cfg := clientcredentials.Config{ClientID: "app", ClientSecret: "s3cret", TokenURL: endpoint.URL, AuthStyle: oauth2.AuthStyleInHeader}
	// The TokenSource takes no context; oauth2source bounds each call by
	// the request's deadline instead.
	src := oauth2source.New(cfg.TokenSource(context.Background()))

	broker := actors.NewBroker(actors.Options{})
	defer broker.Close()
	cred, err := broker.NewCredential("oauth", "", src)
	if err != nil {
		panic(err)
	}
	var wg sync.WaitGroup
	var expiresIn atomic.Int64
	for range 100 {
		wg.Go(func() {
			tok, err := cred.Token(context.Background(), tokens.Request{})
			if err != nil {
				panic(err)
			}
			expiresIn.Store(int64(time.Until(tok.ExpiresOn).Round(time.Hour) / time.Hour))
		})
	}
	wg.Wait()
	fmt.Println("token endpoint calls:", calls.Load())
	fmt.Println("token valid for about", expiresIn.Load(), "h")
	// Output:
	// token endpoint calls: 1
	// token valid for about 1 h
}
