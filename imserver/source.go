package imserver

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
)

// A source is where connection attempts come from, as the per-source
// limits count them: an IPv4 address, or the /64 of an IPv6 address (one
// subscriber's network; a host can pick any address in it).
type sourceKey [16]byte

// sourceOf maps an address to its source; the zero key for an invalid one.
func sourceOf(a netip.Addr) sourceKey {
	a = a.Unmap()
	if !a.IsValid() {
		return sourceKey{}
	}
	k := sourceKey(a.As16()) // IPv4 as ::ffff:a.b.c.d, never masked
	if a.Is6() {
		clear(k[8:])
	}
	return k
}

func (k sourceKey) String() string {
	a := netip.AddrFrom16(k).Unmap()
	if a.Is6() {
		return netip.PrefixFrom(a, 64).String()
	}
	return a.String()
}

// parseTrustedProxies reads -trusted-proxies: CIDR prefixes or single
// addresses.
func parseTrustedProxies(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		var p netip.Prefix
		var err error
		if strings.Contains(s, "/") {
			p, err = netip.ParsePrefix(s)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(s); err == nil && a.Zone() == "" {
				p = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err != nil || !p.IsValid() {
			return nil, fmt.Errorf("invalid trusted proxy %q: want an address or a CIDR prefix", s)
		}
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// maxForwardedHops bounds how many X-Forwarded-For entries are read from the
// right, whatever the header holds.
const maxForwardedHops = 32

// clientAddr is the address a request comes from: its peer's, unless the
// peer is a trusted proxy, in which case the rightmost X-Forwarded-For entry
// that is not a trusted proxy (or, without X-Forwarded-For, X-Real-IP).
// Entries left of the first untrusted one were written by the client and
// are ignored. forwarded reports whether the request carried either header
// (for the hint that a proxy may need trusting).
func clientAddr(remoteAddr string, h http.Header, trusted []netip.Prefix) (addr netip.Addr, forwarded bool) {
	peer := parseHost(remoteAddr)
	xff, xri := h.Values("X-Forwarded-For"), h.Get("X-Real-IP")
	forwarded = len(xff) > 0 || xri != ""
	if !isTrusted(peer, trusted) || !forwarded {
		return peer, forwarded
	}
	if len(xff) == 0 {
		if a := parseHost(xri); a.IsValid() {
			return a, true
		}
		return peer, true
	}
	// From the right: every hop up to the first untrusted one was appended
	// by a trusted proxy about its own peer.
	last := peer
	hops := 0
	for i := len(xff) - 1; i >= 0; i-- {
		v := xff[i]
		for v != "" {
			entry := v
			if j := strings.LastIndexByte(v, ','); j >= 0 {
				entry, v = v[j+1:], v[:j]
			} else {
				v = ""
			}
			entry = strings.TrimSpace(entry)
			if entry == "" {
				continue
			}
			a := parseHost(entry)
			if !a.IsValid() {
				// Not an address ("unknown", an obfuscated name): the
				// hop to its right is the last one known.
				return last, true
			}
			if !isTrusted(a, trusted) {
				return a, true
			}
			last = a
			if hops++; hops == maxForwardedHops {
				return last, true
			}
		}
	}
	return last, true // every hop trusted: the client is inside
}

// parseHost reads an address with or without a port ("1.2.3.4",
// "1.2.3.4:5", "::1", "[::1]:5"), without zone and unmapped; the zero Addr
// if it is none.
func parseHost(s string) netip.Addr {
	s = strings.TrimSpace(s)
	a, err := netip.ParseAddr(s)
	if err != nil {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
				a, _ = netip.ParseAddr(s[1 : len(s)-1])
			}
		} else {
			a = ap.Addr()
		}
	}
	return a.WithZone("").Unmap()
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	if !a.IsValid() {
		return false
	}
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
