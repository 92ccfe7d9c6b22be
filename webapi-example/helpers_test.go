package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/imserver"
	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/testnode"
)

const (
	testAdminToken = "test-admin-token"
	waitFor        = 5 * time.Second
)

// testEnv is the service as it runs for real: a private redis-server, an
// in-process imserver node, imhelper, the event consumer and the HTTP API.
type testEnv struct {
	t     *testing.T
	rc    rueidis.Client
	node  *imserver.Server
	app   *App
	srv   *httptest.Server
	base  string       // URL of the API
	clock atomic.Int64 // added to the app's clock, in ns
}

func newEnv(t *testing.T) *testEnv {
	t.Helper()
	e := &testEnv{t: t}
	redis := redistest.Start(t)
	rc, err := imhelper.DialRedis(redis.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Close)
	e.rc = rc
	log := slog.New(slog.DiscardHandler)

	e.node, err = imserver.New(imserver.Config{Listen: "127.0.0.1:0", DrainWindow: 100 * time.Millisecond}, rc, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.node.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = e.node.Shutdown(ctx)
	})
	ctx := context.Background()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := e.node.WaitReady(rctx); err != nil {
		t.Fatal(err)
	}
	im, err := imhelper.New(ctx, imhelper.Options{Redis: rc, Logger: log, History: historyOptions()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(im.Close)
	e.app = NewApp(im, log, testAdminToken)
	e.app.now = func() time.Time { return time.Now().Add(time.Duration(e.clock.Load())) }
	if err := e.app.Init(ctx); err != nil {
		t.Fatal(err)
	}
	evCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); e.app.ConsumeEvents(evCtx, "test") }()
	t.Cleanup(func() { stop(); <-done })

	e.srv = httptest.NewServer(e.app.Routes())
	t.Cleanup(e.srv.Close)
	e.base = e.srv.URL
	return e
}

// browser is one signed-in (or not yet signed-in) user agent with its own
// cookie jar.
type browser struct {
	e    *testEnv
	hc   *http.Client
	user user
}

func (e *testEnv) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{e: e, hc: &http.Client{Jar: jar, Timeout: 10 * time.Second}}
}

func (e *testEnv) signIn(nick string) *browser {
	e.t.Helper()
	b := e.browser()
	var u user
	b.mustDo("POST", "/api/signin", map[string]string{"nick": nick}, http.StatusOK, &u)
	b.user = u
	return b
}

// do sends a JSON request and returns the status and the raw body.
func (b *browser) do(method, path string, body any, headers ...string) (int, []byte) {
	b.e.t.Helper()
	status, out, err := b.request(method, path, body, headers...)
	if err != nil {
		b.e.t.Fatal(err)
	}
	return status, out
}

// request is do for goroutines other than the test's, which must not call
// t.Fatal: it returns the error instead.
func (b *browser) request(method, path string, body any, headers ...string) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		buf, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequest(method, b.e.base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := b.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	out, err := io.ReadAll(res.Body)
	return res.StatusCode, out, err
}

// mustDo fails the test unless the status is want, and decodes the body
// into out if given.
func (b *browser) mustDo(method, path string, body any, want int, out any, headers ...string) {
	b.e.t.Helper()
	status, raw := b.do(method, path, body, headers...)
	if status != want {
		b.e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, status, want, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			b.e.t.Fatalf("%s %s: bad JSON %q: %v", method, path, raw, err)
		}
	}
}

// wantError checks a 4xx JSON error and its code.
func (b *browser) wantError(method, path string, body any, status int, code string, headers ...string) {
	b.e.t.Helper()
	var e apiError
	b.mustDo(method, path, body, status, &e, headers...)
	if e.Code != code || e.Error == "" {
		b.e.t.Fatalf("%s %s: error %+v, want code %q", method, path, e, code)
	}
}

// frame is what a browser receives on the socket.
type frame = testnode.Frame

type socket struct {
	t      *testing.T
	ws     *websocket.Conn
	frames chan frame
	closed chan websocket.StatusCode
}

// connect does what the page does: asks the API for a URL and opens it.
func (b *browser) connect() *socket {
	b.e.t.Helper()
	return b.resume()
}

// resume is connect with pos parameters appended to the URL, as imclient
// appends the positions it kept ("E.N" personal, "E.N.<channel>").
func (b *browser) resume(pos ...string) *socket {
	b.e.t.Helper()
	var res struct{ URL string }
	b.mustDo("POST", "/api/connect", nil, http.StatusOK, &res)
	for _, p := range pos {
		res.URL += "&pos=" + url.QueryEscape(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, res.URL, nil)
	if err != nil {
		b.e.t.Fatalf("dial %s: %v", res.URL, err)
	}
	s := &socket{t: b.e.t, ws: ws, frames: make(chan frame, 100), closed: make(chan websocket.StatusCode, 1)}
	go func() {
		for {
			_, msg, err := ws.Read(context.Background())
			if err != nil {
				s.closed <- websocket.CloseStatus(err)
				close(s.frames)
				return
			}
			var f frame
			if json.Unmarshal(msg, &f) == nil {
				s.frames <- f
			}
		}
	}()
	b.e.t.Cleanup(func() { _ = ws.CloseNow() })
	b.e.waitOnline(b.user.ID, true)
	return s
}

// next returns the first frame for which match is true, skipping others.
func (s *socket) next(what string, match func(frame) bool) frame {
	s.t.Helper()
	deadline := time.After(waitFor)
	var skipped []string
	for {
		select {
		case f, ok := <-s.frames:
			if !ok {
				s.t.Fatalf("socket closed while waiting for %s (skipped %v)", what, skipped)
			}
			if match(f) {
				return f
			}
			skipped = append(skipped, f.Type+" "+string(f.Data))
		case <-deadline:
			s.t.Fatalf("timed out waiting for %s (skipped %v)", what, skipped)
		}
	}
}

// none fails if a matching frame arrives within d.
func (s *socket) none(what string, d time.Duration, match func(frame) bool) {
	s.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case f, ok := <-s.frames:
			if ok && match(f) {
				s.t.Fatalf("unexpected %s: %+v", what, f)
			}
			if !ok {
				return
			}
		case <-deadline:
			return
		}
	}
}

func (s *socket) close() { _ = s.ws.Close(websocket.StatusNormalClosure, "") }

func kind(k string) func(frame) bool {
	return func(f frame) bool { return f.DataMap()["kind"] == k }
}

// waitOnline polls the broker's presence until id is (or is not) online.
func (e *testEnv) waitOnline(id string, want bool) {
	e.t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		online, err := e.app.im.HasOnline(context.Background(), id)
		if err == nil && online == want {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s online=%v, want %v (err %v)", id, online, want, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// eventually polls cond until it holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
