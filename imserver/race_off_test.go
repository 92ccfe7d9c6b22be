//go:build !race

package imserver_test

const raceEnabled = false
