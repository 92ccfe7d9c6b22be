package main

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// Nicknames that look the same are one account, or refused.
func TestLookAlikeNicknames(t *testing.T) {
	e := newEnv(t)
	bob := e.signIn("bob")
	for _, same := range []string{
		"BOB",
		"ＢＯＢ", // fullwidth
		"𝐛𝐨𝐛", // mathematical bold
		"bᴼb", // modifier letter capital O
	} {
		if got := e.signIn(same).user; got != bob.user {
			t.Errorf("%q signed in as %+v, want bob's account %+v", same, got, bob.user)
		}
	}
	v := e.browser()
	for _, lookAlike := range []string{
		"bоb",    // Cyrillic о
		"bοb",    // Greek ο
		"раураl", // Cyrillic, with a Latin l
	} {
		v.wantError("POST", "/api/signin", map[string]string{"nick": lookAlike}, http.StatusBadRequest, "bad_nick")
	}

	// The first spelling of an account is the one shown, in its normal form.
	carol := e.signIn("Ｃａｒｏｌ")
	if carol.user.Nick != "Carol" {
		t.Fatalf("fullwidth Carol is shown as %q", carol.user.Nick)
	}
	zoe := e.signIn("Zoë")                                  // ë as one character
	if got := e.signIn("ZOE\u0308").user; got != zoe.user { // E and a combining diaeresis
		t.Fatalf("decomposed ZOË signed in as %+v, want %+v", got, zoe.user)
	}
	strasse := e.signIn("Straße")
	if got := e.signIn("STRASSE").user; got != strasse.user {
		t.Fatalf("STRASSE signed in as %+v, want %+v", got, strasse.user)
	}

	// One script at a time is fine, and Japanese mixes its own.
	for _, nick := range []string{"борис", "νίκος", "ラーメン好き", "u_2"} {
		e.signIn(nick)
	}

	// Private messages and the kick find accounts by the same rule.
	var p struct{ With user }
	carol.mustDo("GET", "/api/dms/"+url.PathEscape("ＢＯＢ")+"/messages", nil, http.StatusOK, &p)
	if p.With != bob.user {
		t.Fatalf("history with ＢＯＢ names %+v, want bob", p.With)
	}
	carol.wantError("GET", "/api/dms/"+url.PathEscape("bоb")+"/messages", nil, http.StatusBadRequest, "bad_nick")
	var kicked struct{ Kicked user }
	carol.mustDo("POST", "/api/admin/kick", map[string]string{"nick": "𝐁𝐨𝐛"}, http.StatusOK, &kicked,
		"Authorization", "Bearer "+testAdminToken)
	if kicked.Kicked != bob.user {
		t.Fatalf("kicked %+v, want bob", kicked.Kicked)
	}
}

// FuzzNickname: parseNick takes any bytes from a request. It never panics,
// its forms are valid UTF-8 and already normal (parsing one again gives the
// same forms), and the verdict on a nickname is the verdict on its forms, so
// the forms of a refused nickname are refused too. An accepted one is short
// and has no spaces or control characters in either form.
func FuzzNickname(f *testing.F) {
	for _, s := range []string{
		"bob", "BOB", "bоb", "bοb", "ＢＯＢ", "𝐛𝐨𝐛", "bᴼb", "Zoë", "Zoe\u0308", "Straße", "İstanbul",
		"ﬁx", "ラーメン好き", "борис", "ᏣᎳᎩ", "ꮳꮃꭹ", "b\u200db", " spaced ", "¨a", "βͅ", "a.b-c_d", "\xff", "",
		strings.Repeat("ß", 13), strings.Repeat("x", 25), strings.Repeat("ﷺ", 1000), "bob" + strings.Repeat(" ", 1000),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		shown, key, err := parseNick(in)
		if !utf8.ValidString(shown) || !utf8.ValidString(key) {
			t.Fatalf("parseNick(%q) = %q, %q: not valid UTF-8", in, shown, key)
		}
		for _, form := range []string{shown, key} {
			shown2, key2, err2 := parseNick(form)
			if (err == nil) != (err2 == nil) {
				t.Fatalf("parseNick(%q) err %v, but its form %q: err %v", in, err, form, err2)
			}
			if key2 != key {
				t.Fatalf("parseNick(%q) key %q, but its form %q has key %q", in, key, form, key2)
			}
			if form == shown && shown2 != shown {
				t.Fatalf("parseNick(%q) shows %q, which shows as %q", in, shown, shown2)
			}
		}
		if err != nil {
			return
		}
		for _, form := range []string{shown, key} {
			if n := utf8.RuneCountInString(form); n == 0 || n > maxNickRunes ||
				strings.ContainsFunc(form, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
				t.Fatalf("parseNick(%q) accepted %q (key %q)", in, form, key)
			}
		}
	})
}
