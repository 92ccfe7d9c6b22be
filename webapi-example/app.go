package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"mime"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"github.com/imbroker/imbroker/imclient"
	"github.com/imbroker/imbroker/imhelper"
)

//go:embed static
var staticFiles embed.FS

// pageCSP is the Content-Security-Policy of every response.
var pageCSP = mustPageCSP()

const (
	sessionCookie = "chat_session"
	maxBodyBytes  = 16 << 10 // every API body; a chat message is at most 2000 characters
)

var (
	errNotFound = errors.New("not found")
	// A request without a session, or with one that ended.
	errNoSession      = errors.New("sign in first")
	errSessionExpired = errors.New("session expired; sign in again")
)

// App is the business service. It owns users, sessions, rooms, history and
// offline messages; the broker only carries frames.
type App struct {
	im         *imhelper.Client
	db         store
	log        *slog.Logger
	adminToken string
	now        func() time.Time
	// SecureCookies marks the session cookie Secure on every response, for
	// a service behind a proxy that ends TLS (WEBAPI_SECURE_COOKIES).
	SecureCookies bool
}

// NewApp returns the service. adminToken protects the kick endpoint.
func NewApp(im *imhelper.Client, log *slog.Logger, adminToken string) *App {
	return &App{im: im, db: store{rc: im.Redis()}, log: log, adminToken: adminToken, now: time.Now}
}

// Init creates the default rooms.
func (a *App) Init(ctx context.Context) error {
	if err := a.db.addRooms(ctx, defaultRoomNames()...); err != nil {
		return fmt.Errorf("failed to create the default rooms: %w", err)
	}
	return nil
}

// Routes returns the HTTP handler: the JSON API under /api and the page.
func (a *App) Routes() http.Handler {
	r := chi.NewRouter()
	r.Use(middleware.Recoverer, securityHeaders(pageCSP), limitBody)

	r.Get("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	})
	r.Route("/api", func(r chi.Router) {
		r.Use(noStore)
		r.Post("/signin", a.signIn)
		r.Post("/signout", a.signOut)
		r.Get("/me", a.me)
		r.Group(func(r chi.Router) {
			r.Use(a.requireUser)
			r.Post("/connect", a.connect)
			r.Get("/online", a.online)
			r.Post("/messages", a.sendDirect)
			r.Get("/dms", a.listConversations)
			r.Get("/dms/{nick}/messages", a.directHistory)
			r.Get("/rooms", a.listRooms)
			r.Route("/rooms/{room}", func(r chi.Router) {
				r.Use(roomParam)
				r.Post("/join", a.joinRoom)
				r.Post("/leave", a.leaveRoom)
				r.Get("/members", a.roomMembers)
				r.Get("/messages", a.roomHistory)
				r.Post("/messages", a.sendRoom)
				r.Delete("/messages/{msgID}", a.recall)
			})
		})
		r.With(a.requireAdmin).Post("/admin/kick", a.kick)
		r.NotFound(func(w http.ResponseWriter, r *http.Request) {
			writeError(w, http.StatusNotFound, "not_found", "no such endpoint")
		})
		r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
			writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "method not allowed")
		})
	})
	// The client is served from its package as any Go service can serve it;
	// the page's import map points the name "imclient" here.
	r.Handle("/vendor/imclient/*", http.StripPrefix("/vendor/imclient", imclient.Handler()))
	static, _ := fs.Sub(staticFiles, "static")
	// Browsers ask for /favicon.ico where a page (or a JSON response opened
	// in a tab) links none.
	r.Get("/favicon.ico", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, static, "favicon.svg")
	})
	r.Handle("/*", http.FileServerFS(static))

	// Cookie sessions need CSRF protection: the cookie is SameSite=Lax and
	// every state-changing request from another origin is refused, judged by
	// Sec-Fetch-Site or Origin against Host.
	csrf := http.NewCrossOriginProtection()
	csrf.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusForbidden, "cross_origin", "cross-origin request refused")
	}))
	return csrf.Handler(r)
}

type ctxKey struct{}

func currentUser(r *http.Request) user { return r.Context().Value(ctxKey{}).(user) }

// sessionUser resolves the session cookie to the signed-in user: the
// clientId used with the broker is that user's id, never a browser value.
// Without a live session it returns errNoSession or errSessionExpired.
func (a *App) sessionUser(r *http.Request) (user, error) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" || len(c.Value) > 64 {
		return user{}, errNoSession
	}
	id, err := a.db.session(r.Context(), c.Value)
	if errors.Is(err, errNotFound) {
		return user{}, errSessionExpired
	}
	if err != nil {
		return user{}, err
	}
	return a.db.user(r.Context(), id)
}

func signedOut(err error) bool {
	return errors.Is(err, errNoSession) || errors.Is(err, errSessionExpired)
}

func (a *App) requireUser(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, err := a.sessionUser(r)
		if signedOut(err) {
			writeError(w, http.StatusUnauthorized, "signed_out", err.Error())
			return
		}
		if err != nil {
			a.internalError(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, u)))
	})
}

func (a *App) requireAdmin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			writeError(w, http.StatusUnauthorized, "admin_only", "admin token required (Authorization: Bearer …)")
			return
		}
		if subtle.ConstantTimeCompare([]byte(token), []byte(a.adminToken)) != 1 {
			writeError(w, http.StatusForbidden, "admin_only", "wrong admin token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func roomParam(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !validRoom(chi.URLParam(r, "room")) {
			writeError(w, http.StatusBadRequest, "bad_room", roomRule)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func securityHeaders(csp string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h.Set("X-Content-Type-Options", "nosniff")
			h.Set("X-Frame-Options", "DENY")
			h.Set("Referrer-Policy", "no-referrer")
			h.Set("Content-Security-Policy", csp)
			next.ServeHTTP(w, r)
		})
	}
}

var importMapPattern = regexp.MustCompile(`(?s)<script type="importmap">(.*?)</script>`)

// mustPageCSP allows scripts from this origin only, plus the page's one
// inline script, its import map, by the hash of its text: browsers take
// import maps only inline, and a hash keeps every other inline script out.
// index.html is compiled in, so a missing import map is a build mistake
// that any test run shows.
func mustPageCSP() string {
	page, _ := staticFiles.ReadFile("static/index.html")
	m := importMapPattern.FindSubmatch(page)
	if m == nil {
		panic("static/index.html declares no import map")
	}
	sum := sha256.Sum256(m[1])
	return "default-src 'self'; script-src 'self' 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'; " +
		"connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'"
}

func noStore(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

func limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
		next.ServeHTTP(w, r)
	})
}

// decodeBody reads one JSON object into dst. It insists on a JSON content
// type, which also keeps plain HTML forms out, and refuses unknown fields so
// that typos show up as errors.
func decodeBody(w http.ResponseWriter, r *http.Request, dst any) bool {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/json" {
		writeError(w, http.StatusUnsupportedMediaType, "json_required", "send a JSON body with Content-Type: application/json")
		return false
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(dst)
	if err == nil && dec.More() {
		err = errors.New("more than one JSON value")
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", "request body is larger than 16 KiB")
		return false
	case err != nil:
		writeError(w, http.StatusBadRequest, "bad_json", "invalid JSON body: "+err.Error())
		return false
	}
	return true
}

type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, apiError{Error: msg, Code: code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// internalError logs the cause and tells the browser only that it failed.
func (a *App) internalError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, imhelper.ErrNoNodes) {
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "no_nodes", "no imserver node is up; try again shortly")
		return
	}
	a.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, "internal", "internal error")
}
