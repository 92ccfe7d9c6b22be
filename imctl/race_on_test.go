//go:build race

package main

// raceEnabled makes the imctl binary the tests run race-checked too.
const raceEnabled = true
