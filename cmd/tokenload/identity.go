package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/tokenbroker/tokenbroker/tokens"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource"
	"github.com/tokenbroker/tokenbroker/tokens/azuresource/azuretest"
)

// identityScope is the scope the providers ask the identity endpoint for.
const identityScope = "https://cognitiveservices.azure.com/.default"

// identity is -credential identity: the real azidentity
// ManagedIdentityCredential (one per provider name) calling the embedded
// fake App Service identity endpoint, through a proxy on 127.0.0.1 that
// plays the outage. So an outage is the endpoint failing, hanging or
// being slow, and azidentity's own retries and cache are part of the run.
type identity struct {
	fake       *azuretest.Server
	proxy      *http.Server
	served     chan struct{}
	restoreEnv func()
	outage     *outage

	mu       sync.Mutex
	answered map[int]int // by status, answers the outage gave instead of the endpoint
	hung     int         // requests the outage never answered
}

func startIdentity(cfg *config) (*identity, error) {
	fake := azuretest.NewManagedIdentity(azuretest.Options{Lifetime: cfg.Lifetime})
	env := fake.Env()
	endpoint, err := url.Parse(env["IDENTITY_ENDPOINT"])
	if err != nil {
		fake.Close()
		return nil, err
	}
	target, err := url.Parse(fake.URL)
	if err != nil {
		fake.Close()
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fake.Close()
		return nil, err
	}
	id := &identity{fake: fake, served: make(chan struct{}), outage: &cfg.Outage, answered: map[int]int{}}
	id.proxy = &http.Server{Handler: id.handler(httputil.NewSingleHostReverseProxy(target)), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(id.served)
		_ = id.proxy.Serve(ln) // ends with Close
	}()
	id.restoreEnv = pointAzidentityAt("http://"+ln.Addr().String()+endpoint.Path, env["IDENTITY_HEADER"])
	return id, nil
}

// source is provider j's credential: its own ManagedIdentityCredential
// (a user-assigned identity per provider name), so azidentity keeps one
// cache per provider, as a service with one identity per provider would.
func (id *identity) source(j int) (tokens.Source, error) {
	opts := id.fake.ManagedIdentityCredentialOptions() // dials 127.0.0.1 only
	opts.ID = azidentity.ClientID("tokenload-" + providerName(j))
	cred, err := azidentity.NewManagedIdentityCredential(opts)
	if err != nil {
		return nil, err
	}
	return azuresource.New(cred), nil
}

// endpointStats counts the requests the identity endpoint got, by the
// status they were answered with (0: never answered, the outage hung).
type endpointStats struct {
	Requests int         `json:"requests"`
	Statuses map[int]int `json:"statuses"`
	Issued   int         `json:"tokens_issued"`
}

func (id *identity) stats() endpointStats {
	s := endpointStats{Statuses: map[int]int{}, Issued: id.fake.Issued()}
	for _, r := range id.fake.Requests() {
		s.Statuses[r.Status]++
	}
	id.mu.Lock()
	for st, n := range id.answered {
		s.Statuses[st] += n
	}
	if id.hung > 0 {
		s.Statuses[0] = id.hung
	}
	id.mu.Unlock()
	for _, n := range s.Statuses {
		s.Requests += n
	}
	return s
}

func (id *identity) close() {
	// Close ends hanging requests too: their connections close.
	_ = id.proxy.Close()
	<-id.served
	id.fake.Close()
	id.restoreEnv()
}

// pointAzidentityAt sets the App Service managed-identity variables to
// endpoint and header and removes every other variable azidentity and
// MSAL read (AZURE_*, IDENTITY_*, MSI_*, IMDS_ENDPOINT), so that nothing
// reaches a real identity service. The returned function restores them.
func pointAzidentityAt(endpoint, header string) (restore func()) {
	saved := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "AZURE_") || strings.HasPrefix(k, "IDENTITY_") || strings.HasPrefix(k, "MSI_") || k == "IMDS_ENDPOINT" || k == "DEFAULT_IDENTITY_CLIENT_ID" {
			saved[k] = v
			os.Unsetenv(k)
		}
	}
	os.Setenv("IDENTITY_ENDPOINT", endpoint)
	os.Setenv("IDENTITY_HEADER", header)
	return func() {
		os.Unsetenv("IDENTITY_ENDPOINT")
		os.Unsetenv("IDENTITY_HEADER")
		for k, v := range saved {
			os.Setenv(k, v)
		}
	}
}

// handler plays the outage in front of the identity endpoint: during the
// window, requests get the answers an App Service endpoint in trouble
// gives, hang until the client gives up, or are held -outage-delay.
func (id *identity) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if o := id.outage; o.active(time.Now()) {
			switch o.Kind {
			case outageError:
				id.endpointError(w, http.StatusBadRequest, "Unable to load the proper Managed Identity (tokenload outage)")
				return
			case outage500:
				id.endpointError(w, http.StatusInternalServerError, "Internal Server Error (tokenload outage)")
				return
			case outageHang:
				id.mu.Lock()
				id.hung++
				id.mu.Unlock()
				<-r.Context().Done()
				return
			case outageSlow:
				t := time.NewTimer(o.Delay)
				select {
				case <-t.C:
				case <-r.Context().Done():
					t.Stop()
					return
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (id *identity) endpointError(w http.ResponseWriter, status int, msg string) {
	id.mu.Lock()
	id.answered[status]++
	id.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"statusCode":%d,"message":%q}`, status, msg)
}

// counted reports every call of provider j's source to the collector.
type counted struct {
	src tokens.Source
	j   int
	col *collector
}

func (c counted) Token(ctx context.Context, req tokens.Request) (tokens.Token, error) {
	c.col.credStart(c.j)
	tok, err := c.src.Token(ctx, req)
	c.col.credEnd(c.j, err)
	return tok, err
}
