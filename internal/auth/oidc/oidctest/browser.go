package oidctest

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/net/html"
)

// Browse plays a browser: it opens start, follows redirects, and fills the first login form it
// meets (fields named username and password; other inputs keep their values) and submits it,
// until a page without a form is reached or stop says a redirect target is where to stop
// (without requesting it). It returns that last URL. c should have a cookie jar, like a
// browser.
func Browse(c *http.Client, start, user, password string, stop func(*url.URL) bool) (*url.URL, error) {
	cc := *c
	var stopped *url.URL
	cc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= 20 {
			return errors.New("too many redirects")
		}
		if stop != nil && stop(req.URL) {
			stopped = req.URL
			return http.ErrUseLastResponse
		}
		return nil
	}
	resp, err := cc.Get(start)
	for submitted := 0; ; submitted++ {
		if err != nil {
			return nil, err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if stopped != nil {
			return stopped, nil
		}
		action, values, found := parseForm(string(body))
		if !found || submitted > 0 && resp.StatusCode != http.StatusOK {
			if resp.StatusCode/100 != 2 {
				return resp.Request.URL, fmt.Errorf("%s: %s: %s", resp.Request.URL, resp.Status, strings.TrimSpace(string(body)))
			}
			return resp.Request.URL, nil
		}
		if submitted > 2 {
			return resp.Request.URL, errors.New("the login form keeps coming back")
		}
		target, perr := resp.Request.URL.Parse(action)
		if perr != nil {
			return nil, perr
		}
		values.Set("username", user)
		values.Set("password", password)
		resp, err = cc.PostForm(target.String(), values)
	}
}

// parseForm returns the first form's action and its inputs' values.
func parseForm(doc string) (action string, values url.Values, found bool) {
	z := html.NewTokenizer(strings.NewReader(doc))
	values = url.Values{}
	for {
		switch z.Next() {
		case html.ErrorToken:
			return action, values, found
		case html.StartTagToken, html.SelfClosingTagToken:
			t := z.Token()
			attr := func(k string) string {
				for _, a := range t.Attr {
					if a.Key == k {
						return a.Val
					}
				}
				return ""
			}
			switch t.Data {
			case "form":
				if found {
					return action, values, found
				}
				action, found = attr("action"), true
			case "input":
				if found && attr("name") != "" {
					values.Set(attr("name"), attr("value"))
				}
			}
		}
	}
}
