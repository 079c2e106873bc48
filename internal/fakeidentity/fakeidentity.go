// Package fakeidentity serves fake Azure identity endpoints on 127.0.0.1,
// so that the real azidentity code runs in tests and offline examples:
//
//   - NewAppService: an App Service managed-identity endpoint (what
//     ManagedIdentityCredential calls when IDENTITY_ENDPOINT and
//     IDENTITY_HEADER are set), over plain HTTP like the real one.
//   - NewEntra: a Microsoft Entra token endpoint (what ClientSecretCredential
//     and WorkloadIdentityCredential call), over TLS since azidentity
//     refuses anything else; pass HTTPClient as the credential's transport
//     and DisableInstanceDiscovery.
//
// Both count the token requests they answer, which is what tests assert
// on. Issued tokens are random opaque strings; the server logs and records
// only their fingerprints.
//
// Lifetimes are sent as expires_in (and refresh_in), relative to the
// moment of the answer, so a client running on a fake clock (a
// testing/synctest bubble) computes expiry on its own clock.
package fakeidentity

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tokenbroker/tokenbroker/tokens"
)

// AppServiceAPIVersion is the api-version ManagedIdentityCredential sends.
const AppServiceAPIVersion = "2019-08-01"

// Options configure a Server. The zero value issues one-hour tokens.
type Options struct {
	// Lifetime of issued tokens. Default 1 h.
	Lifetime time.Duration
	// RefreshIn, when set, is sent as refresh_in: the issuer's refresh hint,
	// which azidentity passes on as AccessToken.RefreshOn.
	RefreshIn time.Duration
	// Delay holds every token answer this long (a slow endpoint).
	Delay time.Duration
	// ClientSecret (Entra only) is the secret the token endpoint accepts;
	// empty accepts any.
	ClientSecret string
}

// Request records one token request.
type Request struct {
	Time     time.Time
	Resource string // App Service: resource; Entra: scope
	ClientID string // client_id, when sent
	Tenant   string // Entra only
	Status   int    // the HTTP status answered
	// Fingerprint is tokens.Fingerprint of the token issued; "" on failure.
	Fingerprint string
}

// Server is a fake identity endpoint.
type Server struct {
	srv    *httptest.Server
	opts   Options
	header string // App Service: the X-IDENTITY-HEADER value expected
	entra  bool

	quit chan struct{} // closed by Close: ends the requests held by Hang

	mu         sync.Mutex
	log        []Request
	issued     int
	received   int // token requests that arrived, answered or not
	inFlight   int
	maxFlight  int
	hang       bool
	failStatus int
	failBody   string
	unexpected []string
}

// NewAppService starts a fake App Service managed-identity endpoint.
// Point ManagedIdentityCredential at it with IDENTITY_ENDPOINT=Endpoint()
// and IDENTITY_HEADER=Header().
func NewAppService(opts Options) *Server {
	s := &Server{opts: opts.withDefaults(), header: randomString("hdr", 16), quit: make(chan struct{})}
	s.srv = newLoopbackServer(http.HandlerFunc(s.serveAppService), false)
	return s
}

// NewEntra starts a fake Microsoft Entra token endpoint over TLS. Use
// AuthorityHost() as the credential's ClientOptions.Cloud.ActiveDirectoryAuthorityHost,
// HTTPClient() as its ClientOptions.Transport, and set
// DisableInstanceDiscovery.
func NewEntra(opts Options) *Server {
	s := &Server{opts: opts.withDefaults(), entra: true, quit: make(chan struct{})}
	s.srv = newLoopbackServer(http.HandlerFunc(s.serveEntra), true)
	return s
}

func (o Options) withDefaults() Options {
	if o.Lifetime <= 0 {
		o.Lifetime = time.Hour
	}
	return o
}

func newLoopbackServer(h http.Handler, tls bool) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	// httptest listens on 127.0.0.1 already; say so explicitly, since the
	// whole point is that nothing leaves the machine.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(fmt.Sprintf("fakeidentity: listen on 127.0.0.1: %v", err))
	}
	srv.Listener.Close()
	srv.Listener = l
	if tls {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	return srv
}

// Endpoint is the App Service identity endpoint URL (IDENTITY_ENDPOINT).
func (s *Server) Endpoint() string { return s.srv.URL + "/msi/token" }

// Header is the App Service secret header value (IDENTITY_HEADER).
func (s *Server) Header() string { return s.header }

// AuthorityHost is the Entra authority host URL, with a trailing slash.
func (s *Server) AuthorityHost() string { return s.srv.URL + "/" }

// URL is the server's base URL.
func (s *Server) URL() string { return s.srv.URL }

// HTTPClient returns a client that trusts the server's certificate (for
// NewEntra), keeps no idle connections (so nothing lingers after a test,
// and a client inside a testing/synctest bubble leaves no goroutine
// behind) and refuses to dial anything but loopback addresses. It
// satisfies azcore's policy.Transporter.
func (s *Server) HTTPClient() *http.Client {
	tr := &http.Transport{
		DialContext:       (&net.Dialer{Timeout: 5 * time.Second, Control: loopbackOnly}).DialContext,
		DisableKeepAlives: true,
		Proxy:             nil,
	}
	if s.entra {
		tr.TLSClientConfig = s.srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func loopbackOnly(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("fakeidentity: refusing to dial non-loopback address %s", address)
	}
	return nil
}

// Issued is the number of tokens issued (successful token requests).
func (s *Server) Issued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issued
}

// Requests returns every token request so far, oldest first.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.log...)
}

// Unexpected lists requests to paths the fake does not serve (e.g. an
// instance discovery the test meant to disable).
func (s *Server) Unexpected() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.unexpected...)
}

// Received is the number of token requests that arrived, including those
// still held (Hang, Delay) and those that failed.
func (s *Server) Received() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.received
}

// MaxInFlight is the largest number of token requests the server was
// handling at the same moment.
func (s *Server) MaxInFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxFlight
}

// Hang makes every following token request go unanswered: it is held
// until the client gives up or the server closes (an identity endpoint
// that accepts connections and never replies).
func (s *Server) Hang() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hang = true
}

// Fail makes every following token request fail with status and the JSON
// body given (an identity endpoint's error); Fail(0, "") recovers.
func (s *Server) Fail(status int, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failStatus, s.failBody = status, body
}

// Close stops the server, ending the requests it holds.
func (s *Server) Close() {
	close(s.quit)
	s.srv.Close()
}

func (s *Server) serveAppService(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	req := Request{Time: time.Now(), Resource: q.Get("resource"), ClientID: q.Get("client_id")}
	switch {
	case r.Method != http.MethodGet || r.URL.Path != "/msi/token":
		s.unexpectedPath(w, r)
		return
	case subtle.ConstantTimeCompare([]byte(r.Header.Get("X-Identity-Header")), []byte(s.header)) != 1:
		s.answer(w, &req, http.StatusUnauthorized, `{"statusCode":401,"message":"Unauthorized: missing or wrong X-IDENTITY-HEADER"}`)
		return
	case q.Get("api-version") != AppServiceAPIVersion || req.Resource == "":
		s.answer(w, &req, http.StatusBadRequest, `{"statusCode":400,"message":"api-version 2019-08-01 and resource are required"}`)
		return
	}
	s.issue(w, r, &req, map[string]any{"resource": req.Resource, "client_id": req.ClientID})
}

func (s *Server) serveEntra(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) < 2 {
		s.unexpectedPath(w, r)
		return
	}
	tenant, rest := parts[0], strings.Join(parts[1:], "/")
	switch {
	case r.Method == http.MethodGet && rest == "v2.0/.well-known/openid-configuration":
		base := s.srv.URL + "/" + tenant
		writeJSON(w, http.StatusOK, map[string]any{
			"authorization_endpoint": base + "/oauth2/v2.0/authorize",
			"token_endpoint":         base + "/oauth2/v2.0/token",
			"issuer":                 base + "/v2.0",
		})
	case r.Method == http.MethodPost && rest == "oauth2/v2.0/token":
		if err := r.ParseForm(); err != nil {
			http.Error(w, "bad form", http.StatusBadRequest)
			return
		}
		req := Request{Time: time.Now(), Resource: r.PostForm.Get("scope"), ClientID: r.PostForm.Get("client_id"), Tenant: tenant}
		if r.PostForm.Get("grant_type") != "client_credentials" && r.PostForm.Get("grant_type") != "" {
			s.answer(w, &req, http.StatusBadRequest, `{"error":"unsupported_grant_type","error_description":"AADSTS70003: only client_credentials is faked"}`)
			return
		}
		secret := r.PostForm.Get("client_secret")
		if s.opts.ClientSecret != "" && subtle.ConstantTimeCompare([]byte(secret), []byte(s.opts.ClientSecret)) != 1 {
			s.answer(w, &req, http.StatusUnauthorized, `{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}`)
			return
		}
		s.issue(w, r, &req, map[string]any{"ext_expires_in": int(s.opts.Lifetime.Seconds())})
	default:
		s.unexpectedPath(w, r)
	}
}

// issue answers a token request with a new token, or with the configured
// failure.
func (s *Server) issue(w http.ResponseWriter, r *http.Request, req *Request, extra map[string]any) {
	s.mu.Lock()
	s.received++
	s.inFlight++
	s.maxFlight = max(s.maxFlight, s.inFlight)
	hang := s.hang
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}()
	if hang || s.opts.Delay > 0 {
		var delay <-chan time.Time // nil, never ready, while hanging
		if !hang {
			t := time.NewTimer(s.opts.Delay)
			defer t.Stop()
			delay = t.C
		}
		select {
		case <-delay:
		case <-r.Context().Done():
			return // the client gave up; Close need not wait out the delay
		case <-s.quit:
			return
		}
	}
	s.mu.Lock()
	status, body := s.failStatus, s.failBody
	s.mu.Unlock()
	if status != 0 {
		s.answer(w, req, status, body)
		return
	}
	tok := randomString("fakeid", 24)
	resp := map[string]any{
		"access_token": tok,
		"token_type":   "Bearer",
		"expires_in":   int(s.opts.Lifetime.Seconds()),
	}
	if s.opts.RefreshIn > 0 {
		resp["refresh_in"] = int(s.opts.RefreshIn.Seconds())
	}
	for k, v := range extra {
		resp[k] = v
	}
	req.Fingerprint = tokens.Fingerprint(tok)
	s.answerJSON(w, req, http.StatusOK, resp)
}

func (s *Server) answer(w http.ResponseWriter, req *Request, status int, body string) {
	req.Status = status
	s.record(*req)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

func (s *Server) answerJSON(w http.ResponseWriter, req *Request, status int, v any) {
	req.Status = status
	s.record(*req)
	writeJSON(w, status, v)
}

func (s *Server) record(req Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log = append(s.log, req)
	if req.Status == http.StatusOK {
		s.issued++
	}
}

func (s *Server) unexpectedPath(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.unexpected = append(s.unexpected, r.Method+" "+r.URL.Path)
	s.mu.Unlock()
	http.Error(w, "fakeidentity: not served", http.StatusNotFound)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func randomString(prefix string, n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails on supported platforms
	return prefix + "-" + hex.EncodeToString(b)
}
