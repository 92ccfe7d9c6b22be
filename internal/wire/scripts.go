package wire

import _ "embed"

// Lua scripts run by nodes and imhelper; docs/protocol.md describes what each
// does so that another implementation can do the same.
var (
	//go:embed lua/consume_token.lua
	ScriptConsumeToken string
	//go:embed lua/online.lua
	ScriptOnline string
	//go:embed lua/offline.lua
	ScriptOffline string
	//go:embed lua/leave.lua
	ScriptLeave string
	//go:embed lua/chan_online.lua
	ScriptChanOnline string
	//go:embed lua/reap_done.lua
	ScriptReapDone string
)
