package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// writeJSON writes v as one line of JSON: a whole document for one-shot
// commands, one object of a stream otherwise.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // payloads and metadata read better unescaped
	return enc.Encode(v)
}

// writeTable writes rows under a header, in aligned columns.
func writeTable(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// humanDuration shows a lease's time left to a tenth of a second.
func humanDuration(d time.Duration) string {
	return fmt.Sprintf("%.1fs", d.Seconds())
}

// timeFormat is RFC 3339 in UTC with milliseconds, the precision of event
// times.
const timeFormat = "2006-01-02T15:04:05.000Z07:00"

func orNone(list []string) string {
	if len(list) == 0 {
		return "none"
	}
	return strings.Join(list, ", ")
}

// nonNil makes an empty list print as [] rather than null in JSON.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
