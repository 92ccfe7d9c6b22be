package main

import (
	"context"
	"errors"
	"time"

	"github.com/imbroker/imbroker/imhelper"
)

const (
	eventGroup = "webapi-example"
	// staleEvent: an older event describes presence that has changed since;
	// pages reload the online list whenever they reconnect anyway.
	staleEvent = 2 * time.Minute
)

// presenceEvent is broadcast to every page when a user comes or goes. It
// carries the new counts of the user's rooms, whose online numbers moved,
// as roomsEvent does for joins and leaves.
type presenceEvent struct {
	Kind   string      `json:"kind"` // "presence"
	ID     string      `json:"id"`
	Nick   string      `json:"nick"`
	Online bool        `json:"online"`
	Rooms  []roomCount `json:"rooms,omitempty"`
}

// ConsumeEvents handles the broker's online/offline events until ctx ends.
// It reads the event stream with a consumer group rather than EventBus: an
// online event must not be lost while this service restarts, or a user's
// rooms and offline messages would wait for the next connect; and with
// several webapi processes each event is handled by one of them.
func (a *App) ConsumeEvents(ctx context.Context, consumer string) {
	for {
		// FromStart only matters when the group is created: it makes the
		// events of the first seconds count; stale ones are skipped.
		err := a.im.ConsumeEvents(ctx, eventGroup, consumer, a.handleEvent,
			imhelper.ConsumeOptions{FromStart: true, Block: time.Second})
		if ctx.Err() != nil {
			return
		}
		a.log.Warn("event consumer stopped; restarting", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// handleEvent acts on the client's state now rather than on the event
// alone, so that events handled late or twice do no harm: a user that came
// online gets their rooms joined and kept messages delivered, and every page
// is told the user's current presence and the counts of the user's rooms.
func (a *App) handleEvent(ctx context.Context, e imhelper.Event) error {
	if a.now().Sub(e.Time) > staleEvent {
		return nil
	}
	u, err := a.db.user(ctx, e.Client)
	if errors.Is(err, errNotFound) {
		return nil // a client of another service sharing the broker
	} else if err != nil {
		return err
	}
	online, err := a.im.HasOnline(ctx, u.ID)
	if err != nil {
		return err
	}
	rooms, err := a.db.userRooms(ctx, u.ID)
	if err != nil {
		return err
	}
	if online && e.Type == "online" {
		if err := a.im.JoinChan(ctx, u.ID, roomChans(rooms)...); err != nil {
			return err
		}
		a.deliverKept(ctx, u)
	}
	presence := presenceEvent{Kind: "presence", ID: u.ID, Nick: u.Nick, Online: online}
	if presence.Rooms, err = a.roomCounts(ctx, rooms); err != nil {
		a.log.Warn("failed to count the rooms of a user whose presence changed", "user", u.ID, "err", err)
	}
	if _, err := a.im.SendBroadcastMessage(ctx, presence); err != nil {
		a.log.Warn("failed to broadcast presence", "user", u.ID, "err", err)
	}
	return nil
}

// deliverKept sends the private messages kept while the user was offline,
// from their original senders. What cannot be sent goes back to the inbox
// for the next time the user comes online.
func (a *App) deliverKept(ctx context.Context, u user) {
	for {
		msgs, err := a.db.takeInbox(ctx, u.ID, 50)
		if err != nil {
			a.log.Warn("failed to read kept messages", "user", u.ID, "err", err)
			return
		}
		if len(msgs) == 0 {
			return
		}
		for i, m := range msgs {
			m.Offline = true
			if _, err := a.im.SendMessage(ctx, m.From, []string{u.ID}, m); err != nil {
				a.log.Warn("failed to deliver kept messages", "user", u.ID, "err", err)
				if err := a.db.returnToInbox(ctx, u.ID, msgs[i:]); err != nil {
					a.log.Error("lost kept messages", "user", u.ID, "count", len(msgs)-i, "err", err)
				}
				return
			}
		}
	}
}
