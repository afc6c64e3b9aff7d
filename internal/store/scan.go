package store

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"time"
)

// Scan destinations that accept either engine's representation, so scanning
// needs no dialect: Postgres returns time.Time and jsonb bytes, SQLite
// returns INTEGER microseconds and TEXT.

// timeCol scans a NOT NULL timestamp.
type timeCol struct{ t *time.Time }

func (c timeCol) Scan(src any) error {
	t, ok, err := decodeTime(src)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("unexpected NULL timestamp")
	}
	*c.t = t
	return nil
}

// nullTimeCol scans a nullable timestamp into a pointer (nil for NULL).
type nullTimeCol struct{ t **time.Time }

func (c nullTimeCol) Scan(src any) error {
	t, ok, err := decodeTime(src)
	if err != nil {
		return err
	}
	if ok {
		*c.t = &t
	} else {
		*c.t = nil
	}
	return nil
}

func decodeTime(src any) (time.Time, bool, error) {
	switch v := src.(type) {
	case nil:
		return time.Time{}, false, nil
	case time.Time:
		return v.UTC(), true, nil
	case int64:
		return time.UnixMicro(v).UTC(), true, nil
	}
	return time.Time{}, false, fmt.Errorf("cannot scan %T into a timestamp", src)
}

// rawCol scans a JSON column into a json.RawMessage (nil for NULL).
type rawCol struct{ raw *json.RawMessage }

func (c rawCol) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*c.raw = nil
	case string:
		*c.raw = json.RawMessage(v)
	case []byte:
		// Drivers may reuse the buffer after Scan returns.
		*c.raw = append(json.RawMessage(nil), v...)
	default:
		return fmt.Errorf("cannot scan %T into JSON", src)
	}
	return nil
}

// jsonCol scans a JSON column into a typed value (left as is for NULL).
type jsonCol struct{ v any }

func (c jsonCol) Scan(src any) error {
	var raw json.RawMessage
	if err := (rawCol{&raw}).Scan(src); err != nil {
		return err
	}
	if raw == nil {
		return nil
	}
	return json.Unmarshal(raw, c.v)
}

var (
	_ sql.Scanner = timeCol{}
	_ sql.Scanner = nullTimeCol{}
	_ sql.Scanner = rawCol{}
	_ sql.Scanner = jsonCol{}
)
