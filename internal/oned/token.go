package oned

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// cipherKey derives the AES-256 key and the IV of OpenNebula's server-cipher authentication
// from the server password: key = the first 32 characters of the hex SHA-256 of the password
// (used as 32 key bytes), IV = the first 16 characters of that key.
func cipherKey(serverPassword string) (key, iv []byte) {
	sum := sha256.Sum256([]byte(serverPassword))
	k := hex.EncodeToString(sum[:])[:32]
	return []byte(k), []byte(k[:16])
}

// LoginToken builds the session a server uses to act as target until expire:
// "<server_user>:<target>:<base64(AES-256-CBC("<server_user>:<target>:<expire_epoch>"))>",
// with PKCS#7 padding as OpenSSL applies it.
func LoginToken(serverUser, serverPassword, target string, expire time.Time) (string, error) {
	plain := serverUser + ":" + target + ":" + strconv.FormatInt(expire.Unix(), 10)
	key, iv := cipherKey(serverPassword)
	block, err := aes.NewCipher(key)
	if err != nil {
		return "", err
	}
	pad := aes.BlockSize - len(plain)%aes.BlockSize
	buf := append([]byte(plain), bytes.Repeat([]byte{byte(pad)}, pad)...)
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(buf, buf)
	return serverUser + ":" + target + ":" + base64.StdEncoding.EncodeToString(buf), nil
}

// Token is a decoded login token.
type Token struct {
	ServerUser, Target string
	Expire             time.Time
}

// ParseLoginToken decrypts and checks a login token with the server password (what oned does;
// used by tests and diagnostics).
func ParseLoginToken(session, serverPassword string) (*Token, error) {
	parts := strings.SplitN(session, ":", 3)
	if len(parts) != 3 {
		return nil, errors.New("login token is not <server_user>:<target_user>:<token>")
	}
	ct, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(ct) == 0 || len(ct)%aes.BlockSize != 0 {
		return nil, errors.New("login token: ciphertext is not base64 of whole AES blocks")
	}
	key, iv := cipherKey(serverPassword)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(ct, ct)
	pad := int(ct[len(ct)-1])
	if pad == 0 || pad > aes.BlockSize || !bytes.Equal(ct[len(ct)-pad:], bytes.Repeat([]byte{byte(pad)}, pad)) {
		return nil, errors.New("login token: bad padding (wrong server password?)")
	}
	fields := strings.Split(string(ct[:len(ct)-pad]), ":")
	if len(fields) != 3 {
		return nil, errors.New("login token: plaintext is not <server_user>:<target_user>:<expire>")
	}
	if fields[0] != parts[0] || fields[1] != parts[1] {
		return nil, fmt.Errorf("login token: encrypted users %s:%s differ from %s:%s", fields[0], fields[1], parts[0], parts[1])
	}
	exp, err := strconv.ParseInt(fields[2], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("login token: invalid expiry %q", fields[2])
	}
	return &Token{ServerUser: fields[0], Target: fields[1], Expire: time.Unix(exp, 0)}, nil
}
