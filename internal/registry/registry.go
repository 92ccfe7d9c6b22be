// Package registry reads the node registry; nodes and imhelper share it.
package registry

import (
	"context"
	"encoding/json"
	"slices"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/wire"
)

// Read returns the nodes whose lease is live and that are not draining,
// sorted by id, and the ids listed in the registry whose lease lapsed. A
// draining node is in neither list: it takes no new clients and is not
// dead.
func Read(ctx context.Context, rc rueidis.Client, n wire.Names) (live []wire.NodeInfo, dead []string, err error) {
	ids, err := rc.Do(ctx, rc.B().Smembers().Key(n.NodeSet()).Build()).AsStrSlice()
	if err != nil || len(ids) == 0 {
		return nil, nil, err
	}
	slices.Sort(ids)
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = n.NodeKey(id)
	}
	vals, err := rc.Do(ctx, rc.B().Mget().Key(keys...).Build()).ToArray()
	if err != nil {
		return nil, nil, err
	}
	for i, v := range vals {
		str, err := v.ToString()
		var ni wire.NodeInfo
		if err != nil || json.Unmarshal([]byte(str), &ni) != nil || ni.ID != ids[i] {
			dead = append(dead, ids[i])
			continue
		}
		if !ni.Draining {
			live = append(live, ni)
		}
	}
	return live, dead, nil
}
