package fakeidentity

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tokenbroker/tokenbroker/tokens"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func get(t *testing.T, c *http.Client, u string, header string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	if header != "" {
		req.Header.Set("X-IDENTITY-HEADER", header)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

func TestAppService(t *testing.T) {
	s := NewAppService(Options{})
	defer s.Close()
	c := s.HTTPClient()
	q := "?api-version=" + AppServiceAPIVersion + "&resource=" + url.QueryEscape("https://cognitiveservices.azure.com") + "&client_id=c1"
	if code, _ := get(t, c, s.Endpoint()+q, "wrong"); code != 401 {
		t.Fatalf("wrong header: %d", code)
	}
	if code, _ := get(t, c, s.Endpoint()+"?resource=x", s.Header()); code != 400 {
		t.Fatalf("no api-version: %d", code)
	}
	code, body := get(t, c, s.Endpoint()+q, s.Header())
	tok, _ := body["access_token"].(string)
	if code != 200 || body["token_type"] != "Bearer" || body["expires_in"] != float64(3600) || !strings.HasPrefix(tok, "fakeid-") {
		t.Fatalf("token answer %d %v", code, body["token_type"])
	}
	if s.Issued() != 1 {
		t.Fatalf("issued %d", s.Issued())
	}
	reqs := s.Requests()
	if len(reqs) != 3 || reqs[2].Resource != "https://cognitiveservices.azure.com" || reqs[2].ClientID != "c1" || reqs[2].Fingerprint != tokens.Fingerprint(tok) {
		t.Fatalf("log %+v", reqs)
	}
	s.Fail(500, `{"statusCode":500,"message":"down"}`)
	if code, _ := get(t, c, s.Endpoint()+q, s.Header()); code != 500 {
		t.Fatalf("failing: %d", code)
	}
	s.Fail(0, "")
	if code, _ := get(t, c, s.Endpoint()+q, s.Header()); code != 200 {
		t.Fatalf("recovered: %d", code)
	}
	get(t, c, s.URL()+"/metadata/identity/oauth2/token", "")
	if u := s.Unexpected(); len(u) != 1 {
		t.Fatalf("unexpected %v", u)
	}
}

func TestEntra(t *testing.T) {
	s := NewEntra(Options{ClientSecret: "right"})
	defer s.Close()
	c := s.HTTPClient()
	code, cfg := get(t, c, s.URL()+"/tenant1/v2.0/.well-known/openid-configuration", "")
	if code != 200 || cfg["token_endpoint"] != s.URL()+"/tenant1/oauth2/v2.0/token" || cfg["issuer"] != s.URL()+"/tenant1/v2.0" {
		t.Fatalf("openid configuration %d %v", code, cfg)
	}
	post := func(secret string) int {
		resp, err := c.PostForm(s.URL()+"/tenant1/oauth2/v2.0/token", url.Values{
			"grant_type": {"client_credentials"}, "client_id": {"app"}, "client_secret": {secret}, "scope": {"s/.default"},
		})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if post("wrong") != 401 || post("right") != 200 || s.Issued() != 1 {
		t.Fatalf("secret check or count broken: issued %d", s.Issued())
	}
	if r := s.Requests()[1]; r.Tenant != "tenant1" || r.Resource != "s/.default" || r.ClientID != "app" {
		t.Fatalf("log %+v", r)
	}
	// The default client does not trust the fake's certificate.
	if _, err := http.Get(s.URL() + "/tenant1/v2.0/.well-known/openid-configuration"); err == nil {
		t.Fatal("plain client trusted the fake's certificate")
	}
}

func TestLoopbackOnly(t *testing.T) {
	s := NewAppService(Options{})
	defer s.Close()
	_, err := s.HTTPClient().Get("http://169.254.169.254/metadata/identity/oauth2/token")
	if err == nil || !strings.Contains(err.Error(), "refusing to dial non-loopback") {
		t.Fatalf("err = %v", err)
	}
}

// Hang holds token requests unanswered until the client gives up, counts
// them as received, never as issued; Close ends the ones still held.
func TestHang(t *testing.T) {
	s := NewAppService(Options{})
	c := s.HTTPClient()
	s.Hang()
	q := "?api-version=" + AppServiceAPIVersion + "&resource=r"
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.Endpoint()+q, nil)
	req.Header.Set("X-IDENTITY-HEADER", s.Header())
	if resp, err := c.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("a hanging endpoint answered %d", resp.StatusCode)
	}
	// One more, left held when the server closes.
	held := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, s.Endpoint()+q, nil)
		req.Header.Set("X-IDENTITY-HEADER", s.Header())
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		held <- err
	}()
	for s.Received() < 2 {
		time.Sleep(time.Millisecond)
	}
	if s.MaxInFlight() < 1 || s.Issued() != 0 {
		t.Fatalf("in flight at most %d, issued %d", s.MaxInFlight(), s.Issued())
	}
	s.Close()
	<-held
}

// MaxInFlight is the peak of concurrent requests.
func TestMaxInFlight(t *testing.T) {
	s := NewAppService(Options{Delay: 50 * time.Millisecond})
	defer s.Close()
	c := s.HTTPClient()
	q := "?api-version=" + AppServiceAPIVersion + "&resource=r"
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, s.Endpoint()+q, nil)
			req.Header.Set("X-IDENTITY-HEADER", s.Header())
			resp, err := c.Do(req)
			if err != nil {
				t.Error(err) // not Fatal: this is not the test's goroutine
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("status %d", resp.StatusCode)
			}
		})
	}
	wg.Wait()
	if n := s.MaxInFlight(); n < 2 || n > 5 {
		t.Fatalf("MaxInFlight %d for 5 concurrent requests of 50 ms", n)
	}
	if s.Received() != 5 || s.Issued() != 5 {
		t.Fatalf("received %d, issued %d", s.Received(), s.Issued())
	}
}
