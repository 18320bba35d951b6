import "lib/broken.dsl"

fn encode(x: f32[N, 784]) {
    return Encoder(x)
}
