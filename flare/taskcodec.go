package flare

import (
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // the default codec this one wraps
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	protobuf "google.golang.org/protobuf/proto"

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
}

func newTaskCodec() taskCodec { return taskCodec{std: encoding.GetCodecV2("proto")} }

func (c taskCodec) Name() string { return "proto" }

func (c taskCodec) Unmarshal(data mem.BufferSlice, v any) error { return c.std.Unmarshal(data, v) }

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
