package main

import (
	"fmt"
	"time"

	"github.com/imbroker/imbroker/imhelper"
)

// benchChan is the fan-out scenario's channel.
const benchChan = "bench"

// historyOptions maps -history to imhelper's Options.History:
//
//	off      no personal history (Clients rule of Size 0), no channel history
//	client   imhelper's default: personal streams 100 messages for 2m (nil)
//	channel  no personal history; the fan-out channel keeps 100 for 2m
//	both     personal default and the fan-out channel rule
func historyOptions(mode string) (*imhelper.HistoryOptions, error) {
	off := []imhelper.HistoryRule{{Size: 0}}
	ch := []imhelper.HistoryRule{{Prefix: benchChan, Size: 100, TTL: 2 * time.Minute}}
	switch mode {
	case "", "client":
		return nil, nil
	case "off":
		return &imhelper.HistoryOptions{Clients: off}, nil
	case "channel":
		return &imhelper.HistoryOptions{Clients: off, Channels: ch}, nil
	case "both":
		return &imhelper.HistoryOptions{Channels: ch}, nil
	}
	return nil, fmt.Errorf("bad -history %q (off, client, channel or both)", mode)
}
