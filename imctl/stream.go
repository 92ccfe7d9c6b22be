package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/imhelper"
)

// The commands that run until interrupted (SIGINT or SIGTERM cancel ctx)
// or, for listen, until the node closes the socket.

// connectWithin opens the imhelper client within -timeout; the client then
// lives until the command ends.
func (a *app) connectWithin(ctx context.Context) (*imhelper.Client, error) {
	cctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	return a.client(cctx)
}

type eventJSON struct {
	Type     string    `json:"type"`
	Client   string    `json:"client"`
	Node     string    `json:"node"`
	Meta     string    `json:"meta,omitempty"`
	Conns    int       `json:"conns"`
	Time     time.Time `json:"time"`
	Reason   string    `json:"reason,omitempty"`
	StreamID string    `json:"stream_id,omitempty"`
}

func (a *app) printEvent(e imhelper.Event) error {
	if a.json {
		return writeJSON(a.stdout, eventJSON{Type: e.Type, Client: e.Client, Node: e.Node, Meta: e.Meta,
			Conns: e.Conns, Time: e.Time.UTC(), Reason: e.Reason, StreamID: e.StreamID})
	}
	line := fmt.Sprintf("%s  %-7s  %s  node=%s  conns=%d", e.Time.UTC().Format(timeFormat), e.Type, e.Client, e.Node, e.Conns)
	if e.Reason != "" {
		line += "  reason=" + e.Reason
	}
	if e.Meta != "" {
		line += "  meta=" + e.Meta
	}
	if e.StreamID != "" {
		line += "  id=" + e.StreamID
	}
	_, err := fmt.Fprintln(a.stdout, line)
	return err
}

func eventsCmd(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	group := fs.String("group", "", "consume the event stream as this consumer group (durable: events are acknowledged once printed)")
	consumer := fs.String("consumer", "", "consumer name within -group")
	fromStart := fs.Bool("from-start", false, "a new -group reads the whole stream, not only events after its creation")
	return func(ctx context.Context, a *app, _ []string) error {
		if (*group == "") != (*consumer == "") {
			return usagef("-group and -consumer go together")
		}
		if *fromStart && *group == "" {
			return usagef("-from-start needs -group")
		}
		im, err := a.connectWithin(ctx)
		if err != nil {
			return err
		}
		// A failed print (stdout gone) ends the command; a group leaves the
		// event pending for the next run.
		var printErr error
		if *group == "" {
			bctx, stop := context.WithCancel(ctx)
			defer stop()
			show := func(e imhelper.Event) {
				if printErr = a.printEvent(e); printErr != nil {
					stop()
				}
			}
			err = im.EventBus(bctx, show, show)
		} else {
			// ConsumeEvents retries a failed handler forever; a failed
			// print must end the command instead, leaving the event
			// pending for the next run.
			cctx, stop := context.WithCancel(ctx)
			defer stop()
			err = im.ConsumeEvents(cctx, *group, *consumer, func(_ context.Context, e imhelper.Event) error {
				if printErr = a.printEvent(e); printErr != nil {
					stop()
				}
				return printErr
			}, imhelper.ConsumeOptions{FromStart: *fromStart})
		}
		if printErr != nil {
			return printErr
		}
		if ctx.Err() != nil {
			return nil // interrupted: the normal end
		}
		return err
	}
}

func listenCmd(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	meta := fs.String("meta", "", "connection metadata, as PrevConnectServer's meta (shown in online events)")
	return func(ctx context.Context, a *app, args []string) error {
		id := args[0]
		cctx, cancel := context.WithTimeout(ctx, a.timeout)
		defer cancel()
		im, err := a.client(cctx)
		if err != nil {
			return err
		}
		url, err := im.PrevConnectServer(cctx, id, *meta)
		if err != nil {
			return err
		}
		conn, _, err := websocket.Dial(cctx, url, nil)
		if err != nil {
			return fmt.Errorf("failed to connect to %s: %w", withoutToken(url), err)
		}
		defer conn.CloseNow()
		conn.SetReadLimit(-1) // a debugging client shows whatever the node sends
		fmt.Fprintf(a.stderr, "connected to %s as %s\n", withoutToken(url), id)

		ended := make(chan error, 1)
		go func() {
			for {
				_, b, err := conn.Read(context.Background())
				if err != nil {
					ended <- err
					return
				}
				// A frame is one line of JSON; people also get the time it came.
				if a.json {
					_, err = fmt.Fprintf(a.stdout, "%s\n", b)
				} else {
					_, err = fmt.Fprintf(a.stdout, "%s  %s\n", time.Now().Format("15:04:05.000"), b)
				}
				if err != nil {
					conn.CloseNow()
					ended <- err
					return
				}
			}
		}()
		select {
		case err = <-ended:
		case <-ctx.Done():
			_ = conn.Close(websocket.StatusNormalClosure, "imctl listen stopped")
			<-ended
			return nil
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) {
			return fmt.Errorf("connection lost without a close frame: %w", err)
		}
		if a.json {
			return writeJSON(a.stdout, closedJSON{Type: "closed", Code: int(ce.Code), Reason: ce.Reason})
		}
		_, err = fmt.Fprintf(a.stdout, "closed: %d %s\n", int(ce.Code), ce.Reason)
		return err
	}
}

// closedJSON is listen's last line: how the node closed the socket.
type closedJSON struct {
	Type   string `json:"type"` // "closed", a type no frame has
	Code   int    `json:"code"`
	Reason string `json:"reason"`
}

// withoutToken drops the one-time token from a connect URL for display.
func withoutToken(u string) string {
	base, _, _ := strings.Cut(u, "?")
	return base
}
