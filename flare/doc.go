// Package flare will hold NVFlare 2.0 concepts in Go (Shareable, DXO,
// FLContext), the job and startup-kit configs, the safe pickle codec for the
// wire, and the client and server runtimes.
//
// It is not built yet; the persistor's SecuredPersistor is the server-side
// model store it will use, and persistor/pickle its pickle codec.
package flare
