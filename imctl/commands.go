package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/internal/version"
)

// The one-shot commands: each connects, does one thing and prints it.

type nodeJSON struct {
	ID       string    `json:"id"`
	URL      string    `json:"url"`
	Started  time.Time `json:"started"`
	LeaseMS  int64     `json:"lease_ms"`
	Draining bool      `json:"draining"`
	Clients  int64     `json:"clients"`
	Proto    int       `json:"proto"`
}

func nodesCmd(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		im, err := a.client(ctx)
		if err != nil {
			return err
		}
		nodes, err := im.NodeInfos(ctx)
		if err != nil {
			return err
		}
		if a.json {
			out := make([]nodeJSON, len(nodes))
			for i, n := range nodes {
				out[i] = nodeJSON{ID: n.ID, URL: n.URL, Started: n.Started.UTC(), LeaseMS: n.LeaseLeft.Milliseconds(),
					Draining: n.Draining, Clients: n.Clients, Proto: n.Proto}
			}
			return writeJSON(a.stdout, out)
		}
		if len(nodes) == 0 {
			_, err := fmt.Fprintln(a.stdout, "no live node")
			return err
		}
		rows := make([][]string, len(nodes))
		for i, n := range nodes {
			rows[i] = []string{n.ID, n.URL, humanDuration(n.LeaseLeft), yesNo(n.Draining), strconv.FormatInt(n.Clients, 10)}
		}
		return writeTable(a.stdout, []string{"ID", "URL", "LEASE", "DRAINING", "CLIENTS"}, rows)
	}
}

func onlineCmd(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	count := fs.Bool("count", false, "print only the number of online clients")
	return func(ctx context.Context, a *app, args []string) error {
		im, err := a.client(ctx)
		if err != nil {
			return err
		}
		if *count {
			n, err := im.OnlineCount(ctx)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(a.stdout, map[string]int64{"count": n})
			}
			_, err = fmt.Fprintln(a.stdout, n)
			return err
		}
		// Buffered: a million clients should not cost a million writes.
		w := bufio.NewWriter(a.stdout)
		for id, err := range im.OnlineClients(ctx) {
			if err != nil {
				w.Flush()
				return err
			}
			if a.json {
				err = writeJSON(w, map[string]string{"client": id})
			} else {
				_, err = fmt.Fprintln(w, id)
			}
			if err != nil {
				return err
			}
		}
		return w.Flush()
	}
}

type whoJSON struct {
	Client   string   `json:"client"`
	Owner    string   `json:"owner"`          // "" when no node is live
	Online   bool     `json:"online"`         // has a socket somewhere
	Node     string   `json:"node,omitempty"` // the node it is online on
	Channels []string `json:"channels"`
}

func whoCmd(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		id := args[0]
		im, err := a.client(ctx)
		if err != nil {
			return err
		}
		node, err := im.OnlineNode(ctx, id)
		if err != nil {
			return err
		}
		chans, err := im.GetChanListByClientId(ctx, id)
		if err != nil {
			return err
		}
		w := whoJSON{Client: id, Owner: im.Owner(id), Online: node != "", Node: node, Channels: nonNil(chans)}
		if a.json {
			return writeJSON(a.stdout, w)
		}
		owner, online := w.Owner, "no"
		if owner == "" {
			owner = "none (no live node)"
		}
		if w.Online {
			online = "yes, on " + node
			if node != w.Owner {
				online += " (not its owner: it is being moved, or the view is changing)"
			}
		}
		rows := [][]string{{"owner:", owner}, {"online:", online}, {"channels:", orNone(chans)}}
		return writeTable(a.stdout, []string{"client:", id}, rows)
	}
}

type chanJSON struct {
	Name    string `json:"name"`
	Members int64  `json:"members"`
	Online  int    `json:"online"`
}

func chansCmd(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		im, err := a.client(ctx)
		if err != nil {
			return err
		}
		list, err := im.GetChanList(ctx)
		if err != nil {
			return err
		}
		names := make([]string, len(list))
		for i, c := range list {
			names[i] = c.Name
		}
		members, err := im.ChanMemberCounts(ctx, names)
		if err != nil {
			return err
		}
		out := make([]chanJSON, len(list))
		for i, c := range list {
			out[i] = chanJSON{Name: c.Name, Members: members[i], Online: c.Online}
		}
		if a.json {
			return writeJSON(a.stdout, out)
		}
		if len(out) == 0 {
			_, err := fmt.Fprintln(a.stdout, "no channel")
			return err
		}
		rows := make([][]string, len(out))
		for i, c := range out {
			rows[i] = []string{c.Name, strconv.FormatInt(c.Members, 10), strconv.Itoa(c.Online)}
		}
		return writeTable(a.stdout, []string{"CHANNEL", "MEMBERS", "ONLINE"}, rows)
	}
}

// checkPayload refuses a payload that is not JSON before anything is
// dialled, so that a typo is a usage error even when Redis is down.
func checkPayload(p string) error {
	var buf bytes.Buffer
	if err := json.Compact(&buf, []byte(p)); err != nil {
		return usagef("the payload is not valid JSON (a string needs quotes, e.g. '\"hi\"'): %v", err)
	}
	if !utf8.ValidString(p) {
		return usagef("the payload is not valid UTF-8")
	}
	return nil
}

// printID prints the id of a message sent.
func (a *app) printID(id string) error {
	if a.json {
		return writeJSON(a.stdout, map[string]string{"id": id})
	}
	_, err := fmt.Fprintln(a.stdout, id)
	return err
}

// fromFlag is the sender of send and chan-send.
func fromFlag(fs *flag.FlagSet) *string {
	return fs.String("from", "imctl", "sender clientId put in the frame's \"from\"")
}

func sendCmd(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	from := fromFlag(fs)
	receipt := fs.Bool("receipt", false, "ask for receipts, sent to the sender's sockets")
	echo := fs.Bool("echo", false, "also deliver to the sender's own sockets")
	return func(ctx context.Context, a *app, args []string) error {
		to, payload := args[:len(args)-1], args[len(args)-1]
		if err := checkPayload(payload); err != nil {
			return err
		}
		var opts []imhelper.SendOption
		if *receipt {
			opts = append(opts, imhelper.WithReceipt())
		}
		if *echo {
			opts = append(opts, imhelper.WithEcho())
		}
		im, err := a.client(ctx)
		if err != nil {
			return err
		}
		id, err := im.SendMessage(ctx, *from, to, payload, opts...)
		if err != nil {
			return err
		}
		return a.printID(id)
	}
}

func chanSendCmd(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	from := fromFlag(fs)
	return func(ctx context.Context, a *app, args []string) error {
		if err := checkPayload(args[1]); err != nil {
			return err
		}
		im, err := a.client(ctx)
		if err != nil {
			return err
		}
		id, err := im.SendChanMessage(ctx, *from, args[0], args[1])
		if err != nil {
			return err
		}
		return a.printID(id)
	}
}

func broadcastCmd(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		if err := checkPayload(args[0]); err != nil {
			return err
		}
		im, err := a.client(ctx)
		if err != nil {
			return err
		}
		id, err := im.SendBroadcastMessage(ctx, args[0])
		if err != nil {
			return err
		}
		return a.printID(id)
	}
}

func kickCmd(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		im, err := a.client(ctx)
		if err != nil {
			return err
		}
		if err := im.ForceOffline(ctx, args[0]); err != nil {
			return err
		}
		if a.json {
			return writeJSON(a.stdout, map[string]any{"client": args[0], "kick_sent": true})
		}
		_, err = fmt.Fprintf(a.stdout, "kick sent for %s: its sockets close with 4001\n", args[0])
		return err
	}
}

// versionCmd prints imctl's own build; it needs no Redis.
func versionCmd(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(_ context.Context, a *app, _ []string) error {
		if a.json {
			return writeJSON(a.stdout, version.Get())
		}
		_, err := fmt.Fprintln(a.stdout, "imctl", version.Get())
		return err
	}
}
