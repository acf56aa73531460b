"""DNS protocol only: constants, wire parsing and building. No sockets, no mesh."""
