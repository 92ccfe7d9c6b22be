//go:build race

package imserver_test

// raceEnabled makes the node processes that tests start race-checked too.
const raceEnabled = true
