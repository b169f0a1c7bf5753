// Package sfm is NVFlare's SFM framing (nvflare.fuel.f3.sfm), the frames one
// CellNet connection carries: each gRPC streamer.Frame's data, or each
// WebSocket message, is exactly one frame.
//
// A frame is a 16-byte big-endian prefix (total length, header length,
// type, reserved, flags, app id, stream id, sequence), then its headers
// (a msgpack map), then its payload. [Decode] checks the prefix against the
// bytes present and the limits before it reads anything else; [Frame.Encode]
// writes a frame as NVFlare does.
package sfm

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/flarego/flarego/flare/cellnet/msgpk"
)

// Frame types.
const (
	TypeData  = 1
	TypeFrag  = 2
	TypeAck   = 3
	TypeHello = 4
	TypeReady = 5
	TypePing  = 6
	TypePong  = 7
)

// Flags.
const (
	FlagOOB    = 0x8000
	FlagAck    = 0x4000
	FlagReq    = 0x2000
	FlagResp   = 0x1000
	FlagPubSub = 0x0800
)

// PrefixLen is the size of a frame's fixed prefix.
const PrefixLen = 16

// AppCell is the app id of CellNet's traffic (HELLO and READY use 0).
const AppCell = 1

// MaxFrameBytes bounds a frame: NVFlare's gRPC driver allows messages of
// 2 GiB − 2 MiB; its blob streams send 1 MiB chunks.
const MaxFrameBytes = 2<<30 - 2<<20

// MaxHeaderBytes bounds a frame's msgpack headers (the prefix's field is
// 16 bits).
const MaxHeaderBytes = 1<<16 - 1

// A Frame is one SFM frame.
type Frame struct {
	Type     uint8
	Flags    uint16
	AppID    uint16
	StreamID uint16
	Seq      uint16
	// Headers are the frame's headers (cellnet's cn__… and the stream's
	// sm__… among them), nil for a frame without any.
	Headers msgpk.Map
	Payload []byte
}

// TypeName is the type's name as NVFlare logs it.
func TypeName(t uint8) string {
	switch t {
	case TypeData:
		return "DATA"
	case TypeFrag:
		return "FRAG"
	case TypeAck:
		return "ACK"
	case TypeHello:
		return "HELLO"
	case TypeReady:
		return "READY"
	case TypePing:
		return "PING"
	case TypePong:
		return "PONG"
	}
	return fmt.Sprintf("type %d", t)
}

// ErrFrame is wrapped by the errors of a malformed frame.
var ErrFrame = errors.New("bad SFM frame")

// Decode reads the frame that is all of b. The payload is b's own bytes,
// not a copy.
func Decode(b []byte) (*Frame, error) {
	if len(b) < PrefixLen {
		return nil, fmt.Errorf("%w: %d bytes, shorter than its %d-byte prefix", ErrFrame, len(b), PrefixLen)
	}
	length := binary.BigEndian.Uint32(b[0:])
	hlen := int(binary.BigEndian.Uint16(b[4:]))
	if int64(length) != int64(len(b)) {
		return nil, fmt.Errorf("%w: prefix says %d bytes, the message holds %d", ErrFrame, length, len(b))
	}
	if len(b) > MaxFrameBytes {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrFrame, len(b), MaxFrameBytes)
	}
	if PrefixLen+hlen > len(b) {
		return nil, fmt.Errorf("%w: %d bytes of headers in a frame of %d", ErrFrame, hlen, len(b))
	}
	f := &Frame{Type: b[6], Flags: binary.BigEndian.Uint16(b[8:]), AppID: binary.BigEndian.Uint16(b[10:]),
		StreamID: binary.BigEndian.Uint16(b[12:]), Seq: binary.BigEndian.Uint16(b[14:])}
	if f.Type < TypeData || f.Type > TypePong {
		return nil, fmt.Errorf("%w: unknown type %d", ErrFrame, f.Type)
	}
	if hlen > 0 {
		v, err := msgpk.Unmarshal(b[PrefixLen : PrefixLen+hlen])
		if err != nil {
			return nil, fmt.Errorf("%w: headers: %w", ErrFrame, err)
		}
		m, ok := v.(msgpk.Map)
		if !ok {
			return nil, fmt.Errorf("%w: headers are a %T, not a map", ErrFrame, v)
		}
		f.Headers = m
	}
	f.Payload = b[PrefixLen+hlen:]
	return f, nil
}

// Encode writes the frame.
func (f *Frame) Encode() ([]byte, error) {
	var hb []byte
	if len(f.Headers) > 0 {
		var err error
		if hb, err = msgpk.Marshal(f.Headers); err != nil {
			return nil, err
		}
	}
	if len(hb) > MaxHeaderBytes {
		return nil, fmt.Errorf("SFM frame: %d bytes of headers, more than %d", len(hb), MaxHeaderBytes)
	}
	n := PrefixLen + len(hb) + len(f.Payload)
	if n > MaxFrameBytes {
		return nil, fmt.Errorf("SFM frame: %d bytes, more than %d", n, MaxFrameBytes)
	}
	b := make([]byte, PrefixLen, n)
	binary.BigEndian.PutUint32(b[0:], uint32(n))
	binary.BigEndian.PutUint16(b[4:], uint16(len(hb)))
	b[6] = f.Type
	binary.BigEndian.PutUint16(b[8:], f.Flags)
	binary.BigEndian.PutUint16(b[10:], f.AppID)
	binary.BigEndian.PutUint16(b[12:], f.StreamID)
	binary.BigEndian.PutUint16(b[14:], f.Seq)
	b = append(b, hb...)
	return append(b, f.Payload...), nil
}
