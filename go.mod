module flotilla.dev

go 1.26
