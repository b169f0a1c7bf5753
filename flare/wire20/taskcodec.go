package wire20

import (
	"io"

	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // the default codec this one wraps
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	protobuf "google.golang.org/protobuf/proto"

	"github.com/flarego/flarego/proto/admin"
	"github.com/flarego/flarego/proto/fedlearn"
)

// taskCodec is the server's gRPC codec: the standard protobuf codec, except
// that a CurrentTask is written around its payloads without copying them.
// Every client of a round gets the same multi-megabyte task; with the
// standard codec each response is a fresh copy that waits in gRPC's send
// queue until that client reads it, so hundreds of clients meant hundreds
// of copies. Here they all point at the one encoded task.
type taskCodec struct {
	std encoding.CodecV2
	// submitLimit bounds a SubmitUpdate now (the server's current model
	// sets it); nil means the largest any model may have.
	submitLimit func() int
}

func newTaskCodec(submitLimit func() int) taskCodec {
	return taskCodec{std: encoding.GetCodecV2("proto"), submitLimit: submitLimit}
}

func (c taskCodec) Name() string { return "proto" }

// Unmarshal checks a request against its message's size limit, and
// decompresses it here, within that limit, when it came gzip-compressed
// (see gzipPassThrough). No valid protobuf message starts with 0x1f (field
// 3, wire type 7 does not exist), so gzip's magic number tells the two apart;
// a peer that sends gzip data without saying so gets the same limits.
func (c taskCodec) Unmarshal(data mem.BufferSlice, v any) error {
	submit := maxContributionBytes()
	if c.submitLimit != nil {
		submit = c.submitLimit()
	}
	name, limit := requestLimit(v, submit)
	if data.Len() > limit {
		return errTooLarge(name, limit)
	}
	var b []byte
	if len(data) == 1 {
		b = data[0].ReadOnlyData()
	} else {
		b = data.Materialize()
	}
	if len(b) >= 2 && b[0] == 0x1f && b[1] == 0x8b {
		var err error
		if b, err = gunzipLimited(b, limit, name); err != nil {
			return err
		}
	}
	return protobuf.Unmarshal(b, v.(protobuf.Message))
}

// requestLimit names a request message and bounds its size; submit is
// the bound on a SubmitUpdate.
func requestLimit(v any, submit int) (string, int) {
	switch v.(type) {
	case *fedlearn.Contribution:
		return "SubmitUpdate", submit
	case *admin.Reply:
		return "admin reply", maxReplyBytes
	case *fedlearn.ClientLogin:
		return "Register", maxSmallRequestBytes
	case *fedlearn.ClientState:
		return "GetTask/Quit", maxSmallRequestBytes
	case *fedlearn.Token:
		return "Heartbeat", maxSmallRequestBytes
	case *admin.Client:
		return "Retrieve", maxSmallRequestBytes
	}
	return "request", maxSmallRequestBytes
}

// gzipPassThrough is the server's decompressor for "gzip": it hands the
// compressed bytes on as they are, and taskCodec.Unmarshal decompresses
// them. gRPC decompresses before the codec and knows only one limit for
// every method (the largest, a SubmitUpdate's), so with its own gzip a
// 1 MB Register could expand to a gigabyte; the codec knows the message and
// stops at its limit. Only the server uses it: clients in the same
// process keep gRPC's gzip for the answers.
type gzipPassThrough struct{}

func (gzipPassThrough) Type() string                   { return "gzip" }
func (gzipPassThrough) Do(r io.Reader) ([]byte, error) { return io.ReadAll(r) }

func (c taskCodec) Marshal(v any) (mem.BufferSlice, error) {
	ct, ok := v.(*fedlearn.CurrentTask)
	if !ok {
		return c.std.Marshal(v)
	}
	// Field order as protobuf writes it: meta (1), data (2), meta_data (3), task_name (4).
	var out mem.BufferSlice
	var head []byte
	if ct.Meta != nil {
		b, err := protobuf.Marshal(ct.Meta)
		if err != nil {
			return nil, err
		}
		head = protowire.AppendTag(head, 1, protowire.BytesType)
		head = protowire.AppendBytes(head, b)
	}
	if ct.Data != nil {
		// ModelData{params: map<string, NDArray>}: each entry is a message
		// {1: key, 2: NDArray{1: bytes}}.
		size := 0
		for k, nd := range ct.Data.Params {
			size += protowire.SizeTag(1) + protowire.SizeBytes(entrySize(k, nd))
		}
		head = protowire.AppendTag(head, 2, protowire.BytesType)
		head = protowire.AppendVarint(head, uint64(size))
		for k, nd := range ct.Data.Params {
			head = protowire.AppendTag(head, 1, protowire.BytesType)
			head = protowire.AppendVarint(head, uint64(entrySize(k, nd)))
			head = protowire.AppendTag(head, 1, protowire.BytesType)
			head = protowire.AppendString(head, k)
			if nd == nil {
				continue
			}
			head = protowire.AppendTag(head, 2, protowire.BytesType)
			head = protowire.AppendVarint(head, uint64(ndSize(nd)))
			if len(nd.Ndarray) == 0 {
				continue
			}
			head = protowire.AppendTag(head, 1, protowire.BytesType)
			head = protowire.AppendVarint(head, uint64(len(nd.Ndarray)))
			out = append(out, mem.SliceBuffer(head), mem.SliceBuffer(nd.Ndarray))
			head = nil
		}
	}
	if ct.MetaData != nil {
		b, err := protobuf.Marshal(ct.MetaData)
		if err != nil {
			return nil, err
		}
		head = protowire.AppendTag(head, 3, protowire.BytesType)
		head = protowire.AppendBytes(head, b)
	}
	if ct.TaskName != "" {
		head = protowire.AppendTag(head, 4, protowire.BytesType)
		head = protowire.AppendString(head, ct.TaskName)
	}
	if len(head) > 0 {
		out = append(out, mem.SliceBuffer(head))
	}
	return out, nil
}

func ndSize(nd *fedlearn.NDArray) int {
	if len(nd.Ndarray) == 0 {
		return 0
	}
	return protowire.SizeTag(1) + protowire.SizeBytes(len(nd.Ndarray))
}

func entrySize(k string, nd *fedlearn.NDArray) int {
	n := protowire.SizeTag(1) + protowire.SizeBytes(len(k))
	if nd != nil {
		n += protowire.SizeTag(2) + protowire.SizeBytes(ndSize(nd))
	}
	return n
}
