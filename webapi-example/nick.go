package main

import (
	"errors"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/norm"
)

const (
	maxNickRunes = 24
	// maxNickInput bounds what is normalised at all, and the forms it
	// makes: NFKC can make a string 18 times longer (ﷺ). No acceptable
	// nickname is longer than this in bytes, however it is typed (each of
	// its characters is at most a letter and three combining marks of 4
	// bytes each).
	maxNickInput = 512
)

var (
	errNickRule = errors.New("nicknames are 1-24 characters: letters, digits, '.', '-' and '_'")
	errNickMix  = errors.New("a nickname may not mix scripts, such as Latin with Cyrillic or Greek: " +
		"their letters look alike")
)

// foldCase is Unicode case folding, which is safe for concurrent use.
var foldCase = cases.Fold()

// foldKey case-folds s. Unicode folds Cherokee letters to upper case (the
// lower-case ones came later, in Unicode 8), but x/text's Fold lowercases
// them, so that folding its own output would change it again: Cherokee is
// put right here, or one account would have two keys.
func foldKey(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.Is(unicode.Cherokee, r) {
			return unicode.ToUpper(r)
		}
		return r
	}, foldCase.String(s))
}

// scriptSets are the scripts one nickname may combine besides using a single
// one (Unicode TR39's "highly restrictive" level): Latin with the scripts of
// Japanese, Chinese or Korean. Many letters that look alike are in
// different scripts (Latin o, Cyrillic о, Greek ο), so refusing other mixes
// keeps one nickname from imitating another by swapping a few letters.
var scriptSets = [][]string{
	{"Latin", "Han", "Hiragana", "Katakana"},
	{"Latin", "Han", "Bopomofo"},
	{"Latin", "Han", "Hangul"},
}

// parseNick turns a typed nickname into the form shown to others and the key
// that names its account: nicknames with one key are one account. Both are
// NFKC, so width and font variants (ＢＯＢ, 𝐛𝐨𝐛) become plain letters; the key
// is also case-folded (BOB is bob; STRASSE and Straße are one). The rules
// judge the key, so every spelling of one account gets the same answer; err
// says why the nickname is refused. shown and key are returned either way
// (empty for an input too long to normalise), and parsing either of them
// again gives the same key and verdict.
func parseNick(s string) (shown, key string, err error) {
	if s = strings.TrimSpace(s); len(s) > maxNickInput {
		return "", "", errNickRule
	}
	shown = strings.TrimSpace(norm.NFKC.String(strings.ToValidUTF8(s, "\uFFFD")))
	key = norm.NFKC.String(foldKey(shown))
	if len(shown) > maxNickInput || len(key) > maxNickInput {
		return "", "", errNickRule // as parsing them again would answer
	}
	return shown, key, checkNick(key)
}

// checkNick applies the rules to the key of a nickname.
func checkNick(s string) error {
	if n := utf8.RuneCountInString(s); n == 0 || n > maxNickRunes {
		return errNickRule
	}
	var scripts []string
	for _, r := range s {
		if !unicode.IsLetter(r) && !unicode.IsDigit(r) && r != '.' && r != '-' && r != '_' {
			return errNickRule
		}
		if name := scriptOf(r); name != "Common" && name != "Inherited" && !slices.Contains(scripts, name) {
			scripts = append(scripts, name)
		}
	}
	if !allowedMix(scripts) {
		return errNickMix
	}
	return nil
}

// allowedMix says whether one nickname may use all of scripts.
func allowedMix(scripts []string) bool {
	if len(scripts) <= 1 {
		return true
	}
	for _, set := range scriptSets {
		if !slices.ContainsFunc(scripts, func(name string) bool { return !slices.Contains(set, name) }) {
			return true // every one of scripts is in set
		}
	}
	return false
}

// scriptOf names the Unicode script of r. Characters shared by scripts, such
// as the ASCII digits or the Japanese long-vowel mark ー, are "Common".
func scriptOf(r rune) string {
	for name, table := range unicode.Scripts {
		if unicode.Is(table, r) {
			return name
		}
	}
	return "Unknown" // unassigned: not a letter or digit, so refused before
}
