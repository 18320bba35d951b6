# A library file with a mistake, imported by decl_import_broken.dsl.
model Encoder(x: f32[N, 784]) -> z {
    z = dense(x, 2
}
