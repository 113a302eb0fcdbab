module memwarden.dev/examples/leaky

go 1.26.0
