// Command imctl is the operator's tool for a running broker: it lists the
// nodes, online clients and channels, looks up one client, sends messages,
// forces clients offline, tails online/offline events and connects to a
// node as a client. It talks to the nodes only through Redis, with the
// imhelper package, as a business service does.
//
//	imctl nodes
//	imctl who alice
//	imctl send bob '{"text":"hi"}'
//	imctl events --json
//	imctl listen alice
//
// docs/imctl.md describes every command, its output and the exit codes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/imbroker/imbroker/imhelper"
)

// Exit codes: 2 for a command line (or setting) that cannot work, 1 for a
// failure while running it.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError is a command line that cannot work; it exits with exitUsage.
// synopsis asks for the command's usage to follow the message.
type usageError struct {
	msg      string
	synopsis bool
}

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{msg: fmt.Sprintf(format, args...)} }

// globals are the flags every command takes, before or after its name.
type globals struct {
	redisURL string
	prefix   string
	json     bool
	timeout  time.Duration
}

// register adds the global flags to fs, with their current values as the
// defaults so that a value given before the command name is kept.
func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.redisURL, "redis-url", g.redisURL, "Redis URL, as the nodes' -redis-url (IM_REDIS_URL)")
	fs.StringVar(&g.prefix, "prefix", g.prefix, "prefix of Redis keys and channels, as the nodes' -prefix (IM_PREFIX)")
	fs.BoolVar(&g.json, "json", g.json, "machine output: one JSON document, or one JSON object per line for streams")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "deadline of a one-shot command; for events and listen, of connecting")
}

// defaultGlobals reads the environment the way imserver does: a variable
// that is set, even to "", replaces the built-in default, and "" then
// means that default.
func defaultGlobals() globals {
	g := globals{redisURL: "redis://127.0.0.1:6379/0", prefix: "im:", timeout: 10 * time.Second}
	if v, ok := os.LookupEnv("IM_REDIS_URL"); ok {
		g.redisURL = v
	}
	if v, ok := os.LookupEnv("IM_PREFIX"); ok {
		g.prefix = v
	}
	return g
}

// app is one run of a command.
type app struct {
	globals
	stdout, stderr io.Writer
	im             *imhelper.Client // opened by client, closed by run
}

// client returns the imhelper client every command works through,
// connecting on first use.
func (a *app) client(ctx context.Context) (*imhelper.Client, error) {
	if a.im != nil {
		return a.im, nil
	}
	im, err := a.connect(ctx)
	a.im = im
	return im, err
}

func (a *app) connect(ctx context.Context) (*imhelper.Client, error) {
	url := a.redisURL
	if url == "" {
		url = "redis://127.0.0.1:6379/0"
	}
	if err := imhelper.ValidateRedisURL(url); err != nil {
		return nil, usageError{msg: err.Error()}
	}
	log := slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	im, err := imhelper.New(ctx, imhelper.Options{RedisURL: url, Prefix: a.prefix, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("cannot reach Redis at %s: %w", redactURL(url), err)
	}
	return im, nil
}

// redactURL hides the password of a Redis URL in messages.
func redactURL(u string) string {
	scheme, rest, ok := strings.Cut(u, "://")
	at := strings.LastIndex(rest, "@")
	if !ok || at < 0 {
		return u
	}
	user, _, hasPassword := strings.Cut(rest[:at], ":")
	if !hasPassword {
		return u
	}
	return scheme + "://" + user + ":***" + rest[at:]
}

// command is one subcommand. setup registers its own flags on fs and
// returns what runs it.
type command struct {
	name    string
	args    string // synopsis of the arguments
	summary string
	// minArgs and maxArgs bound the positional arguments (maxArgs < 0: no
	// bound); argsWhat names them in the error.
	minArgs, maxArgs int
	argsWhat         string
	// streams: runs until interrupted, so -timeout bounds only connecting.
	streams bool
	setup   func(fs *flag.FlagSet) func(ctx context.Context, a *app, args []string) error
}

var commands = []command{
	{name: "nodes", summary: "list the live nodes: URL, lease left, draining, clients",
		argsWhat: "no arguments", setup: nodesCmd},
	{name: "online", args: "[--count]", summary: "stream the online clientIds, or print their number",
		argsWhat: "no arguments", setup: onlineCmd},
	{name: "who", args: "<clientId>", summary: "show a client's owner node, presence and channels",
		minArgs: 1, maxArgs: 1, argsWhat: "one clientId", setup: whoCmd},
	{name: "chans", summary: "list the channels with their member and online counts",
		argsWhat: "no arguments", setup: chansCmd},
	{name: "send", args: "[-from id] [-receipt] [-echo] <clientId>... <json>", summary: "send a message to clients; prints its id",
		minArgs: 2, maxArgs: -1, argsWhat: "one or more clientIds and a JSON payload", setup: sendCmd},
	{name: "chan-send", args: "[-from id] <channel> <json>", summary: "send a message to a channel's online members; prints its id",
		minArgs: 2, maxArgs: 2, argsWhat: "a channel and a JSON payload", setup: chanSendCmd},
	{name: "broadcast", args: "<json>", summary: "send a message to every online client; prints its id",
		minArgs: 1, maxArgs: 1, argsWhat: "a JSON payload", setup: broadcastCmd},
	{name: "kick", args: "<clientId>", summary: "force a client offline (close code 4001)",
		minArgs: 1, maxArgs: 1, argsWhat: "one clientId", setup: kickCmd},
	{name: "events", args: "[--group G --consumer C [--from-start]]", summary: "tail online/offline events, or consume them as a group",
		argsWhat: "no arguments", streams: true, setup: eventsCmd},
	{name: "listen", args: "[-meta text] <clientId>", summary: "connect as a client and print every frame until the socket closes",
		minArgs: 1, maxArgs: 1, argsWhat: "one clientId", streams: true, setup: listenCmd},
	{name: "version", summary: "print imctl's build (module version, commit, Go version)",
		argsWhat: "no arguments", setup: versionCmd},
}

func findCommand(name string) *command {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i]
		}
	}
	return nil
}

// run parses args, runs one command and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{globals: defaultGlobals(), stdout: stdout, stderr: stderr}
	top := newFlagSet("imctl")
	a.register(top)
	if err := top.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			mainUsage(stdout, top)
			return exitOK
		}
		fmt.Fprintf(stderr, "imctl: %v\n\n", err)
		mainUsage(stderr, top)
		return exitUsage
	}
	if top.NArg() == 0 {
		mainUsage(stderr, top)
		return exitUsage
	}
	name, rest := top.Arg(0), top.Args()[1:]
	if name == "help" {
		if len(rest) == 0 {
			mainUsage(stdout, top)
			return exitOK
		}
		name, rest = rest[0], []string{"-h"}
	}
	cmd := findCommand(name)
	if cmd == nil {
		fmt.Fprintf(stderr, "imctl: unknown command %q\n\n", name)
		mainUsage(stderr, top)
		return exitUsage
	}
	// own holds the command's flags for its usage; fs parses them and the
	// global ones.
	own := newFlagSet("imctl " + cmd.name)
	exec := cmd.setup(own)
	fs := newFlagSet("imctl " + cmd.name)
	own.VisitAll(func(f *flag.Flag) { fs.Var(f.Value, f.Name, f.Usage) })
	a.register(fs)
	globalFlags := newFlagSet("imctl")
	g := defaultGlobals()
	g.register(globalFlags)
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			commandUsage(stdout, cmd, own, globalFlags)
			return exitOK
		}
		fmt.Fprintf(stderr, "imctl %s: %v\n\n", cmd.name, err)
		commandUsage(stderr, cmd, own, globalFlags)
		return exitUsage
	}
	if a.timeout <= 0 {
		fmt.Fprintf(stderr, "imctl %s: -timeout must be positive\n", cmd.name)
		return exitUsage
	}
	if !cmd.streams {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.timeout)
		defer cancel()
	}
	err := needArgs(fs.Args(), cmd.minArgs, cmd.maxArgs, cmd.argsWhat)
	if err == nil {
		err = exec(ctx, a, fs.Args())
	}
	if a.im != nil {
		a.im.Close()
	}
	return a.exitCode(cmd.name, err, func(w io.Writer) { commandUsage(w, cmd, own, globalFlags) })
}

// exitCode reports err of command name and returns the exit code it means.
func (a *app) exitCode(name string, err error, usage func(io.Writer)) int {
	if err == nil {
		return exitOK
	}
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%w (-timeout %v)", err, a.timeout)
	}
	fmt.Fprintf(a.stderr, "imctl %s: %v\n", name, err)
	var ue usageError
	if errors.As(err, &ue) && ue.synopsis {
		fmt.Fprintln(a.stderr)
		usage(a.stderr)
	}
	if errors.As(err, &ue) || isInvalidInput(err) {
		return exitUsage
	}
	return exitFailure
}

// isInvalidInput reports an argument imhelper refused as malformed.
func isInvalidInput(err error) bool {
	for _, e := range []error{imhelper.ErrInvalidClientID, imhelper.ErrInvalidChannel, imhelper.ErrInvalidPayload,
		imhelper.ErrPayloadTooLarge, imhelper.ErrMetaTooLarge} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// Errors and usage are printed by run, to stdout for -h and to stderr
	// otherwise.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

func mainUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, `imctl operates an imbroker deployment through Redis, as imhelper does.

Usage:
  imctl [global flags] <command> [flags] [arguments]

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Global flags (also accepted after the command name):
`)
	printDefaults(w, fs)
	fmt.Fprint(w, `
Flags come before arguments. "imctl <command> -h" shows a command's flags.
Exit status: 0 success, 1 runtime failure (e.g. Redis unreachable),
2 usage error (bad flags, arguments, JSON payload or Redis URL).
`)
}

func commandUsage(w io.Writer, c *command, own, globalFlags *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: %s\n\n%s.\n", strings.TrimSpace("imctl "+c.name+" "+c.args), capitalize(c.summary))
	hasOwn := false
	own.VisitAll(func(*flag.Flag) { hasOwn = true })
	if hasOwn {
		fmt.Fprint(w, "\nFlags:\n")
		printDefaults(w, own)
	}
	fmt.Fprint(w, "\nGlobal flags:\n")
	printDefaults(w, globalFlags)
}

func printDefaults(w io.Writer, fs *flag.FlagSet) {
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// needArgs checks the number of positional arguments; max < 0 means no
// upper bound.
func needArgs(args []string, min, max int, what string) error {
	if len(args) < min || (max >= 0 && len(args) > max) {
		return usageError{msg: fmt.Sprintf("expected %s, got %d argument(s)", what, len(args)), synopsis: true}
	}
	return nil
}
