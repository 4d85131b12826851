package portal_test

import (
	"crypto/sha256"
	"strconv"
)

func sha256Sum(s string) [32]byte { return sha256.Sum256([]byte(s)) }

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
