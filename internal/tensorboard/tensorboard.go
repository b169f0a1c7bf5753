// Package tensorboard writes and reads TensorBoard event files: the
// TFRecord framing (a little-endian uint64 length, the masked CRC32C of
// the length, the data, the masked CRC32C of the data) around protobuf
// Event messages, with the field numbers of TensorFlow's event.proto and
// summary.proto.
//
// Entry points: [Create] opens a [Writer] in a run directory
// (events.out.tfevents.<unix seconds>.<hostname>), whose [Writer.Scalar]
// appends one scalar summary; [ReadFile] and [Reader] parse a file back
// into [Event]s.
//
// Promise: every record reaches the file (one write call each) before
// Scalar returns, so TensorBoard shows the curves while a run goes on; a
// write error is returned once, by the call that met it, and the writer
// then drops what it is given (training never stops for its logs); the
// reader checks both CRCs and bounds every length, and a damaged file is
// an error naming the file and the offset, never a panic.
package tensorboard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// FileVersion is the file_version of the first event of a file.
const FileVersion = "brain.Event:2"

// MaxRecordBytes bounds a record's declared length: a scalar event is a
// few dozen bytes, and a larger length is a damaged or foreign file.
const MaxRecordBytes = 16 << 20

// Field numbers of event.proto's Event and summary.proto's Summary and
// Summary.Value.
const (
	fieldEventWallTime    = 1 // double
	fieldEventStep        = 2 // int64
	fieldEventFileVersion = 3 // string
	fieldEventSummary     = 5 // Summary
	fieldSummaryValue     = 1 // repeated Summary.Value
	fieldValueTag         = 1 // string
	fieldValueSimpleValue = 2 // float
)

// An Event is one record of an event file: the first of a file carries
// FileVersion, the others a summary of scalar values.
type Event struct {
	WallTime    float64 // seconds since the Unix epoch
	Step        int64
	FileVersion string
	Values      []Value // the summary's values that have a simple_value
}

// A Value is one scalar of a summary.
type Value struct {
	Tag   string
	Value float32
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// maskedCRC is the TFRecord checksum of b: CRC32C, rotated right by 15
// bits, plus a constant.
func maskedCRC(b []byte) uint32 {
	c := crc32.Checksum(b, castagnoli)
	return ((c >> 15) | (c << 17)) + 0xa282ead8
}

// appendRecord appends data framed as a TFRecord.
func appendRecord(b, data []byte) []byte {
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(data)))
	b = append(b, n[:]...)
	b = binary.LittleEndian.AppendUint32(b, maskedCRC(n[:]))
	b = append(b, data...)
	return binary.LittleEndian.AppendUint32(b, maskedCRC(data))
}

// Marshal is e's protobuf encoding (zero fields are left out, as proto3
// leaves them out).
func (e Event) Marshal() []byte {
	var b []byte
	if e.WallTime != 0 {
		b = protowire.AppendTag(b, fieldEventWallTime, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, math.Float64bits(e.WallTime))
	}
	if e.Step != 0 {
		b = protowire.AppendTag(b, fieldEventStep, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(e.Step))
	}
	if e.FileVersion != "" {
		b = protowire.AppendTag(b, fieldEventFileVersion, protowire.BytesType)
		b = protowire.AppendString(b, e.FileVersion)
	}
	if len(e.Values) > 0 {
		var s []byte
		for _, v := range e.Values {
			var m []byte
			m = protowire.AppendTag(m, fieldValueTag, protowire.BytesType)
			m = protowire.AppendString(m, v.Tag)
			m = protowire.AppendTag(m, fieldValueSimpleValue, protowire.Fixed32Type)
			m = protowire.AppendFixed32(m, math.Float32bits(v.Value))
			s = protowire.AppendTag(s, fieldSummaryValue, protowire.BytesType)
			s = protowire.AppendBytes(s, m)
		}
		b = protowire.AppendTag(b, fieldEventSummary, protowire.BytesType)
		b = protowire.AppendBytes(b, s)
	}
	return b
}

// errMalformed is what a record that is no protobuf Event wraps.
var errMalformed = errors.New("malformed protobuf")

// UnmarshalEvent decodes an Event. Fields it does not know, and summary
// values without a simple_value (images, histograms, tensors), are
// skipped.
func UnmarshalEvent(b []byte) (Event, error) {
	var e Event
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == fieldEventWallTime && typ == protowire.Fixed64Type:
			e.WallTime = math.Float64frombits(x)
		case num == fieldEventStep && typ == protowire.VarintType:
			e.Step = int64(x)
		case num == fieldEventFileVersion && typ == protowire.BytesType:
			e.FileVersion = string(v)
		case num == fieldEventSummary && typ == protowire.BytesType:
			return fields(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
				if num != fieldSummaryValue || typ != protowire.BytesType {
					return nil
				}
				var val Value
				simple := false
				err := fields(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
					switch {
					case num == fieldValueTag && typ == protowire.BytesType:
						val.Tag = string(v)
					case num == fieldValueSimpleValue && typ == protowire.Fixed32Type:
						val.Value, simple = math.Float32frombits(uint32(x)), true
					}
					return nil
				})
				if err == nil && simple {
					e.Values = append(e.Values, val)
				}
				return err
			})
		}
		return nil
	})
	return e, err
}

// fields calls f with each field of the message b: its number, its wire
// type, and its value (v for length-delimited fields, x for numbers).
func fields(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: %v", errMalformed, protowire.ParseError(n))
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch typ {
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var y uint32
			y, n = protowire.ConsumeFixed32(b)
			x = uint64(y)
		case protowire.Fixed64Type:
			x, n = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("%w: field %d: %v", errMalformed, num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := f(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}
