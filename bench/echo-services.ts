/** Services the benchmark's nodes serve: Echo for payload sizes. Loaded with `tunnel-node --services`. */
export default {
  Bench: {
    Echo(value: unknown) {
      return value;
    },
  },
};
