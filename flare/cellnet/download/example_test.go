package download_test

import (
	"context"
	"fmt"

	"github.com/flarego/flarego/flare"
	"github.com/flarego/flarego/flare/cellnet/download"
	"github.com/flarego/flarego/flare/cellnet/fobs"
	"github.com/flarego/flarego/flare/cellnet/lobs"
	"github.com/flarego/flarego/persistor"
)

// A site sends a result with its arrays by reference; the server decodes
// it, downloading them. Here the two talk directly; over CellNet, Request
// sends on download.Channel/download.Topic and the site's handler calls
// Handle with the request's origin.
func Example() {
	site := download.NewService("site-1.job", download.Config{})
	defer site.Close()
	result := flare.NewShareable()
	result.DXO = &flare.DXO{Kind: flare.KindWeights, Data: []flare.NamedArray{
		{Name: "w", Array: persistor.FromFloat32([]float32{1, 2, 3, 4}, 2, 2)}}}
	payload, err := site.Encode(result)
	if err != nil {
		panic(err)
	}

	server := &download.Fetcher{
		Request: func(ctx context.Context, fqcn string, req []byte) ([]byte, error) {
			return site.Handle("server.job", req)
		},
		Limits: download.Limits{MaxBytes: 64 << 20},
	}
	c, err := lobs.Decode(payload, lobs.V27)
	if err != nil {
		panic(err)
	}
	v, err := fobs.Decode(c, server.Options(context.Background()))
	if err != nil {
		panic(err)
	}
	w := v.(*flare.Shareable).DXO.Get("w")
	vals, _ := w.Float32s()
	fmt.Println(w.Shape, vals, site.Len())
	// Output: [2 2] [1 2 3 4] 0
}
