// Package azuretest serves fake Azure identity endpoints on 127.0.0.1, in
// the manner of net/http/httptest, so that the real azidentity credentials
// run offline in tests and examples:
//
//   - NewManagedIdentity: an App Service managed-identity endpoint, for
//     azidentity.ManagedIdentityCredential. Set the variables Env returns
//     (the package never touches the process environment) and build the
//     credential from ManagedIdentityCredentialOptions.
//   - NewEntra: a Microsoft Entra token endpoint over TLS, for
//     ClientSecretCredential (ClientSecretCredentialOptions) and the other
//     client-credentials flows (ClientOptions, DisableInstanceDiscovery).
//
// A Server counts the token requests it gets, reports the tokens it issues
// by tokens.Fingerprint only, and can be scripted while requests run:
// latency, an error status, a hang, token lifetimes.
//
// azidentity caches managed-identity tokens for the whole process, by
// identity and resource, whatever credential or server got them; tokens
// with 5 minutes or less left are not cached. So a test that counts
// requests needs an identity or a resource of its own:
// ManagedIdentityCredentialOptions gives each call a new client id.
package azuretest

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/tokenbroker/tokenbroker/tokens"
)

// Options configure a new Server. The zero value issues one-hour tokens at
// once and, for Entra, accepts any client secret.
type Options struct {
	Lifetime     time.Duration // of issued tokens; default 1 h
	RefreshIn    time.Duration // sent as refresh_in (azidentity's RefreshOn) when > 0
	Latency      time.Duration // each token request is answered this late
	ClientSecret string        // Entra: the only secret accepted; "" accepts any
}

// Request is one token request a Server got.
type Request struct {
	Resource    string // managed identity: the resource (a scope less /.default)
	Scope       string // Entra: the scopes, less the OpenID ones MSAL adds
	ClientID    string // the client id sent, if any
	Tenant      string // Entra: the tenant in the path
	Status      int    // the status answered; 0 while held or if never answered
	Fingerprint string // tokens.Fingerprint of the token issued, if any
}

// Server is a fake identity endpoint. Its methods are safe for concurrent
// use, also while requests run.
type Server struct {
	URL string // base URL, http://127.0.0.1:port (https for Entra)

	entra  bool
	secret string // Entra: the accepted client secret
	header string // managed identity: the IDENTITY_HEADER value
	srv    *httptest.Server
	quit   chan struct{} // closed by Close: ends held requests
	once   sync.Once

	mu                    sync.Mutex
	lifetime, refreshIn   time.Duration
	latency               time.Duration
	hold                  chan struct{} // non-nil while hanging; closed by Release
	failStatus            int
	failBody              string
	log                   []Request
	issued                int
	inFlight, maxInFlight int
	unexpected            []string
}

const msiPath = "/msi/token"

// NewManagedIdentity starts an App Service managed-identity endpoint over
// HTTP, as App Service serves it. It answers GET /msi/token with
// api-version=2019-08-01, a resource and the X-IDENTITY-HEADER from Env.
func NewManagedIdentity(opts Options) *Server {
	s := newServer(opts)
	s.header = randomString("header", 16)
	s.start(false)
	return s
}

// NewEntra starts a Microsoft Entra endpoint over TLS with a certificate
// only Client trusts. It serves /{tenant}/v2.0/.well-known/openid-configuration
// and client-credentials token requests at /{tenant}/oauth2/v2.0/token.
func NewEntra(opts Options) *Server {
	s := newServer(opts)
	s.entra, s.secret = true, opts.ClientSecret
	s.start(true)
	return s
}

func newServer(opts Options) *Server {
	s := &Server{quit: make(chan struct{}), latency: opts.Latency}
	s.SetLifetime(opts.Lifetime, opts.RefreshIn)
	return s
}

func (s *Server) start(useTLS bool) {
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	// httptest listens on 127.0.0.1 already; say so, since nothing may
	// leave the machine.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(fmt.Sprintf("azuretest: listen on 127.0.0.1: %v", err))
	}
	s.srv.Listener.Close()
	s.srv.Listener = l
	// TLS handshake failures of clients that do not trust the certificate
	// would otherwise be logged to stderr.
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if useTLS {
		s.srv.StartTLS()
	} else {
		s.srv.Start()
	}
	s.URL = s.srv.URL
}

// Close shuts the server down, ending the requests it holds (their
// connections close unanswered), and waits for its handlers to return.
func (s *Server) Close() {
	s.once.Do(func() { close(s.quit) })
	s.srv.Close()
}

// Env is what points ManagedIdentityCredential at a NewManagedIdentity
// server: IDENTITY_ENDPOINT, IDENTITY_HEADER, and an empty
// IDENTITY_SERVER_THUMBPRINT (set, it selects Service Fabric). Set them,
// e.g. with t.Setenv; azidentity reads them at every token request. Nil
// for Entra.
func (s *Server) Env() map[string]string {
	if s.entra {
		return nil
	}
	return map[string]string{
		"IDENTITY_ENDPOINT":          s.URL + msiPath,
		"IDENTITY_HEADER":            s.header,
		"IDENTITY_SERVER_THUMBPRINT": "",
	}
}

// Client returns a new HTTP client for the server: it trusts the server's
// certificate, dials loopback addresses only (never 169.254.169.254) and
// keeps no idle connections, so nothing outlives a test or a
// testing/synctest bubble it was made in. It has no timeout of its own:
// the caller's deadline decides how long a held request waits.
func (s *Server) Client() *http.Client {
	tr := &http.Transport{
		DialContext:       (&net.Dialer{Timeout: 5 * time.Second, Control: loopbackOnly}).DialContext,
		DisableKeepAlives: true,
	}
	if s.entra {
		pool := x509.NewCertPool()
		pool.AddCert(s.srv.Certificate())
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	return &http.Client{Transport: tr}
}

// ClientOptions are azcore options for any azidentity credential calling
// the server: Client as the transport and, for Entra, the server as the
// authority host. Entra credentials also need DisableInstanceDiscovery.
func (s *Server) ClientOptions() azcore.ClientOptions {
	o := azcore.ClientOptions{Transport: s.Client()}
	if s.entra {
		o.Cloud = cloud.Configuration{ActiveDirectoryAuthorityHost: s.URL + "/"}
	}
	return o
}

// ManagedIdentityCredentialOptions are options for a ManagedIdentityCredential
// calling a NewManagedIdentity server, with ClientOptions and, as ID, a
// user-assigned client id made for this call, so the credential starts
// with azidentity's process-wide cache cold.
func (s *Server) ManagedIdentityCredentialOptions() *azidentity.ManagedIdentityCredentialOptions {
	return &azidentity.ManagedIdentityCredentialOptions{
		ClientOptions: s.ClientOptions(),
		ID:            azidentity.ClientID(randomString("azuretest-client", 8)),
	}
}

// ClientSecretCredentialOptions are options for a ClientSecretCredential
// calling a NewEntra server: ClientOptions and DisableInstanceDiscovery.
func (s *Server) ClientSecretCredentialOptions() *azidentity.ClientSecretCredentialOptions {
	return &azidentity.ClientSecretCredentialOptions{ClientOptions: s.ClientOptions(), DisableInstanceDiscovery: true}
}

// SetLatency makes the token requests that arrive from now on wait d
// before their answer.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// SetLifetime sets the lifetime (default 1 h when <= 0) and refresh_in
// (none when <= 0) of the tokens issued from now on. Both are sent
// relative to the answer, so a client on a fake clock computes expiry on
// its own clock.
func (s *Server) SetLifetime(lifetime, refreshIn time.Duration) {
	if lifetime <= 0 {
		lifetime = time.Hour
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lifetime, s.refreshIn = lifetime, refreshIn
}

// Fail makes token requests get status and body instead of a token;
// Fail(0, "") issues tokens again. An empty body is the endpoint's usual
// error for status: {"statusCode":…,"message":…} for managed identity,
// {"error":…,"error_description":…} for Entra. Under the race detector,
// give an Entra credential that meets a retryable status no retries
// (azuresource.WithRetry with MaxRetries -1): azcore rewinds a token
// POST's body to retry while net/http may still be reading it.
func (s *Server) Fail(status int, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failStatus, s.failBody = status, body
}

// Hang holds the token requests that arrive from now on unanswered until
// Release, until their client gives up, or until Close.
func (s *Server) Hang() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hold == nil {
		s.hold = make(chan struct{})
	}
}

// Release ends Hang: the held requests are answered as scripted now.
func (s *Server) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hold != nil {
		close(s.hold)
		s.hold = nil
	}
}

// Received is the number of token requests that arrived, answered or not.
func (s *Server) Received() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.log)
}

// Issued is the number of tokens issued.
func (s *Server) Issued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issued
}

// MaxInFlight is the most token requests the server held at one moment.
func (s *Server) MaxInFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxInFlight
}

// Requests returns the token requests so far, in order of arrival.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.log...)
}

// Unexpected lists the requests (method and path) the server does not
// serve, such as an instance discovery a test meant to disable.
func (s *Server) Unexpected() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.unexpected...)
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if s.entra {
		s.serveEntra(w, r)
	} else {
		s.serveManagedIdentity(w, r)
	}
}

func (s *Server) serveManagedIdentity(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || r.URL.Path != msiPath {
		s.notServed(w, r)
		return
	}
	q := r.URL.Query()
	i := s.arrived(Request{Resource: q.Get("resource"), ClientID: q.Get("client_id")})
	var refused int
	var why string
	switch {
	case subtle.ConstantTimeCompare([]byte(r.Header.Get("X-Identity-Header")), []byte(s.header)) != 1:
		refused, why = http.StatusUnauthorized, s.errorBody(http.StatusUnauthorized, "missing or wrong X-IDENTITY-HEADER")
	case q.Get("api-version") != "2019-08-01" || q.Get("resource") == "":
		refused, why = http.StatusBadRequest, s.errorBody(http.StatusBadRequest, "api-version 2019-08-01 and resource are required")
	}
	s.token(w, r, i, refused, why, map[string]any{"resource": q.Get("resource"), "client_id": q.Get("client_id")})
}

func (s *Server) serveEntra(w http.ResponseWriter, r *http.Request) {
	tenant, rest, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	switch {
	case tenant != "" && r.Method == http.MethodGet && rest == "v2.0/.well-known/openid-configuration":
		base := s.URL + "/" + tenant
		writeJSON(w, http.StatusOK, map[string]any{
			"authorization_endpoint": base + "/oauth2/v2.0/authorize",
			"token_endpoint":         base + "/oauth2/v2.0/token",
			"issuer":                 base + "/v2.0",
		})
	case tenant != "" && r.Method == http.MethodPost && rest == "oauth2/v2.0/token":
		_ = r.ParseForm() // a malformed form leaves fields empty, answered below
		f := r.PostForm
		i := s.arrived(Request{Scope: requestedScope(f.Get("scope")), ClientID: f.Get("client_id"), Tenant: tenant})
		var refused int
		var why string
		switch {
		case f.Get("grant_type") != "client_credentials":
			refused, why = http.StatusBadRequest, `{"error":"unsupported_grant_type","error_description":"azuretest: only client_credentials is served"}`
		case s.secret != "" && subtle.ConstantTimeCompare([]byte(f.Get("client_secret")), []byte(s.secret)) != 1:
			refused, why = http.StatusUnauthorized, `{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}`
		}
		s.token(w, r, i, refused, why, nil)
	default:
		s.notServed(w, r)
	}
}

// requestedScope drops the OpenID scopes MSAL adds to every request.
func requestedScope(scope string) string {
	var kept []string
	for _, sc := range strings.Fields(scope) {
		if sc != "openid" && sc != "offline_access" && sc != "profile" {
			kept = append(kept, sc)
		}
	}
	return strings.Join(kept, " ")
}

// arrived records a token request and returns its index in the log.
func (s *Server) arrived(req Request) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log = append(s.log, req)
	return len(s.log) - 1
}

// token answers token request i as scripted: after the hang and the
// latency, with its refusal (refused: a status, why: the body) if it is
// not valid, else with the scripted failure, else with a new token (extra
// adds fields).
func (s *Server) token(w http.ResponseWriter, r *http.Request, i, refused int, why string, extra map[string]any) {
	s.mu.Lock()
	s.inFlight++
	s.maxInFlight = max(s.maxInFlight, s.inFlight)
	hold, latency := s.hold, s.latency
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}()
	if !s.wait(r.Context(), hold, latency) {
		// No answer at all: the connection closes, as with an endpoint
		// that never replies.
		panic(http.ErrAbortHandler)
	}

	if refused != 0 {
		s.answer(w, i, refused, why, nil)
		return
	}
	s.mu.Lock()
	status, body := s.failStatus, s.failBody
	lifetime, refreshIn := s.lifetime, s.refreshIn
	s.mu.Unlock()
	if status != 0 {
		if body == "" {
			body = s.errorBody(status, http.StatusText(status))
		}
		s.answer(w, i, status, body, nil)
		return
	}
	tok := randomString("azuretest", 24)
	resp := map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": int(lifetime.Seconds())}
	if refreshIn > 0 {
		resp["refresh_in"] = int(refreshIn.Seconds())
	}
	if s.entra {
		resp["ext_expires_in"] = int(lifetime.Seconds())
	}
	for k, v := range extra {
		resp[k] = v
	}
	b, _ := json.Marshal(resp)
	s.answer(w, i, http.StatusOK, string(b), &tok)
}

// wait holds a request while hold is open, then latency; false when the
// client gave up or the server closed first.
func (s *Server) wait(ctx context.Context, hold chan struct{}, latency time.Duration) bool {
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return false
		case <-s.quit:
			return false
		}
	}
	if latency <= 0 {
		return true
	}
	t := time.NewTimer(latency)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.quit:
		return false
	}
}

// answer records and writes the answer to token request i; tok is the
// token issued, if any, recorded by fingerprint only.
func (s *Server) answer(w http.ResponseWriter, i, status int, body string, tok *string) {
	s.mu.Lock()
	s.log[i].Status = status
	if tok != nil {
		s.log[i].Fingerprint = tokens.Fingerprint(*tok)
		s.issued++
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// errorBody is the endpoint's usual error JSON for status.
func (s *Server) errorBody(status int, message string) string {
	var v any = map[string]any{"statusCode": status, "message": message}
	if s.entra {
		code := "invalid_request"
		switch {
		case status == http.StatusUnauthorized:
			code = "invalid_client"
		case status >= 500:
			code = "temporarily_unavailable"
		}
		v = map[string]any{"error": code, "error_description": "azuretest: " + message}
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func (s *Server) notServed(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.unexpected = append(s.unexpected, r.Method+" "+r.URL.Path)
	s.mu.Unlock()
	http.Error(w, "azuretest: not served", http.StatusNotFound)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func loopbackOnly(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("azuretest: refusing to dial non-loopback address %s", address)
	}
	return nil
}

func randomString(prefix string, n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
	return prefix + "-" + hex.EncodeToString(b)
}
