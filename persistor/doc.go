// Package persistor keeps model weights unreadable to anyone without the key.
//
// It owns three formats and one store:
//
//   - Fernet keys and tokens, interchangeable with Python's cryptography.fernet
//     ([GenerateKey], [ReadKeyFile], [Encrypt], [Decrypt], and the streaming
//     [NewEncrypter] and [DecryptFrom] for models too large to copy).
//   - PyTorch .pt files: [ReadPT] reads what torch.save writes (zip and legacy
//     formats) into a [StateDict] of typed tensors without executing anything;
//     [WritePT] writes a zip .pt that torch.load(weights_only=True) accepts.
//   - NVFlare's persistence layout {"model": ..., "meta_props": ..., "train_conf": ...}
//     as a [Checkpoint].
//   - [SecuredPersistor], the server's model store: it encrypts in memory and
//     writes atomically, so no plaintext weight ever reaches the disk, and it
//     fails closed when no key is available.
//
// Keys are loaded with [ReadKeyFile] (package fcp finds the key file inside a
// Rhino Health FCP container, in the seed's lookup order). A [Key] never
// prints its value: formatting one gives a fixed placeholder.
//
// Compatibility promise: every token this package writes decrypts with
// cryptography's Fernet, and every token Fernet writes decrypts here; every
// .pt this package writes loads in torch 1.13 and torch 2.x with
// weights_only=True.
package persistor
