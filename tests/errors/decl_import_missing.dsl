import "models/encoder.dsl"

fn main(x: f32[N, 10]) {
    return relu(x)
}
