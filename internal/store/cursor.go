package store

import (
	"encoding/base64"
	"strconv"
	"strings"
	"time"
)

// cursor is a keyset position: the (created_at, id) of the last row of a
// page. Opaque to callers; the version prefix lets the format change later
// without misreading old cursors.
type cursor struct {
	at time.Time
	id string
}

const cursorVersion = "v1"

func (c cursor) String() string {
	raw := cursorVersion + "." + strconv.FormatInt(c.at.UnixMicro(), 10) + "." + c.id
	return base64.RawURLEncoding.EncodeToString([]byte(raw))
}

func parseCursor(s string) (cursor, error) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return cursor{}, invalidf("malformed cursor")
	}
	parts := strings.SplitN(string(raw), ".", 3)
	if len(parts) != 3 || parts[0] != cursorVersion || parts[2] == "" {
		return cursor{}, invalidf("malformed cursor")
	}
	us, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return cursor{}, invalidf("malformed cursor")
	}
	return cursor{at: time.UnixMicro(us).UTC(), id: parts[2]}, nil
}
