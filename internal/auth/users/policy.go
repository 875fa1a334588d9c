package users

import (
	_ "embed"
	"errors"
	"strings"
	"unicode/utf8"
)

// The password policy: at least MinPasswordLength characters, at most MaxPasswordBytes bytes,
// not the user's name, and not one of a list of commonly used passwords. Nothing else is
// demanded (no character classes), following NIST SP 800-63B: length and a block list stop
// the guesses that work; composition rules only make passwords harder to remember.
const MinPasswordLength = 12

// Policy errors, each a sentence fit to show the person choosing the password.
var (
	ErrTooShort     = errors.New("the password must be at least 12 characters long")
	ErrTooLong      = errors.New("the password must be at most 1024 bytes long")
	ErrNotUTF8      = errors.New("the password must be valid UTF-8 text")
	ErrIsUserName   = errors.New("the password must not be the user name")
	ErrCommon       = errors.New("the password is too common; choose one that is not on lists of frequently used passwords")
	ErrControlChars = errors.New("the password must not contain control characters")
)

//go:embed common-passwords.txt
var commonList string

var common = func() map[string]struct{} {
	m := map[string]struct{}{}
	for _, l := range strings.Split(commonList, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			m[strings.ToLower(l)] = struct{}{}
		}
	}
	return m
}()

// CheckPassword applies the policy to a new password for user.
func CheckPassword(user, password string) error {
	switch {
	case len(password) > MaxPasswordBytes:
		return ErrTooLong
	case !utf8.ValidString(password):
		return ErrNotUTF8
	case strings.ContainsFunc(password, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return ErrControlChars
	case utf8.RuneCountInString(password) < MinPasswordLength:
		return ErrTooShort
	case strings.EqualFold(strings.TrimSpace(password), strings.TrimSpace(user)):
		return ErrIsUserName
	}
	if _, ok := common[strings.ToLower(password)]; ok {
		return ErrCommon
	}
	return nil
}
