package web

// SessionCheck is how often an open shell checks its session, for tests to shorten.
var SessionCheck = &sessionCheck
