package imserver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/internal/redistest"
)

func waitFor(t *testing.T, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func startTestNode(t *testing.T, cfg Config) *Server {
	t.Helper()
	// Every test client dials from 127.0.0.1: one source. The per-source
	// limits have their own tests (flood_internal_test.go).
	if cfg.ConnectRatePerSource == 0 {
		cfg.ConnectRatePerSource = -1
	}
	if cfg.OfflineGrace == 0 { // tests of the grace set their own
		cfg.OfflineGrace = -1
	}
	return runTestNode(t, cfg, nil, nil)
}

// runTestNode starts node "solo" with cfg on a free port (on a private
// redis-server unless cfg names one), logging to log (nil: nowhere), after
// prepare (if not nil) has seen it, and waits until it is ready; it shuts
// the node down when the test ends.
func runTestNode(t *testing.T, cfg Config, log *slog.Logger, prepare func(*Server)) *Server {
	t.Helper()
	if cfg.RedisURL == "" {
		cfg.RedisURL = redistest.Start(t).URL()
	}
	cfg.Listen = "127.0.0.1:0"
	cfg.NodeID = "solo"
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s, err := New(cfg, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	if prepare != nil {
		prepare(s)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	waitFor(t, 30*time.Second, func() error {
		if !s.Ready() {
			return errors.New("not ready")
		}
		return nil
	})
	return s
}

// TestProbeRepairsSilentSubscription: the node's subscription to its own
// channel is dropped behind its back (the connection stays up, so nothing
// reports an error). The probe notices, readiness goes false, and the node
// resubscribes.
func TestProbeRepairsSilentSubscription(t *testing.T) {
	s := startTestNode(t, Config{ProbeInterval: 100 * time.Millisecond})
	s.sub.mu.Lock()
	cur := s.sub.cur.(interface{ DropNodeChannel(context.Context) error })
	s.sub.mu.Unlock()
	if err := cur.DropNodeChannel(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, func() error {
		if s.Ready() {
			return errors.New("still ready with a dead subscription")
		}
		return nil
	})
	waitFor(t, 5*time.Second, func() error {
		if !s.Ready() {
			return errors.New("not repaired")
		}
		return nil
	})
	// The repaired subscription delivers the node channel again.
	before := s.sub.lastProbe.Load()
	waitFor(t, 2*time.Second, func() error {
		if s.sub.lastProbe.Load() == before {
			return errors.New("no probe since repair")
		}
		return nil
	})
}

// TestTLS serves wss:// from cert and key files.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	s := startTestNode(t, Config{TLSCert: certFile, TLSKey: keyFile})
	if got := s.PublicURL(); got[:6] != "wss://" {
		t.Fatalf("public URL %s should use wss://", got)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, s.PublicURL()+"?token=x", &websocket.DialOptions{HTTPClient: hc})
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bad token over TLS: %v %v; want a 401 over a working TLS handshake", resp, err)
	}
}

func selfSigned(t *testing.T, dir string) (string, string, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	_ = os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}
